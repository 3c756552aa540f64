//! A small argument parser shared by the subcommands: `-x VALUE`, `--long VALUE`, flags and
//! positionals, with errors that name the argument.

pub struct Args {
    items: Vec<String>,
    used: Vec<bool>,
}

impl Args {
    pub fn new(args: &[String]) -> Self {
        Args { items: args.to_vec(), used: vec![false; args.len()] }
    }

    pub fn wants_help(&self) -> bool {
        self.items.iter().any(|a| a == "-h" || a == "--help")
    }

    /// True if any of `names` is present (consumed).
    pub fn flag(&mut self, names: &[&str]) -> bool {
        let mut found = false;
        for (i, a) in self.items.iter().enumerate() {
            if !self.used[i] && names.contains(&a.as_str()) {
                self.used[i] = true;
                found = true;
            }
        }
        found
    }

    /// The value after the last of `names`, if present.
    pub fn value(&mut self, names: &[&str]) -> Result<Option<String>, String> {
        let mut out = None;
        let mut i = 0;
        while i < self.items.len() {
            if !self.used[i] && names.contains(&self.items[i].as_str()) {
                let v = self.items.get(i + 1).ok_or_else(|| format!("{} needs a value", self.items[i]))?;
                self.used[i] = true;
                self.used[i + 1] = true;
                out = Some(v.clone());
                i += 1;
            }
            i += 1;
        }
        Ok(out)
    }

    /// A parsed value after one of `names`, or `default`.
    pub fn parse<T: std::str::FromStr>(&mut self, names: &[&str], default: T) -> Result<T, String> {
        match self.value(names)? {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{}: cannot parse '{v}'", names[0])),
        }
    }

    /// The remaining positional arguments; an unknown option is an error.
    pub fn rest(&mut self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for (i, a) in self.items.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            if a.starts_with('-') && a.len() > 1 && a.parse::<f64>().is_err() {
                return Err(format!("unknown option '{a}' (see --help)"));
            }
            out.push(a.clone());
        }
        Ok(out)
    }
}
