//! `strftime_now(format)` for chat templates (GPT-OSS's harmony system message writes the
//! current date, Llama 3.1+'s too): the current UTC date and time formatted with the common
//! `strftime` directives. UTC because the library has no time-zone database; Hugging Face
//! renders local time, the same date for most of a day.

use minijinja::{Error, ErrorKind};
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// The template function: `format` applied to the current UTC time.
pub fn strftime_now(format: String) -> Result<String, Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_time(&format, secs)
}

/// A date and time of the proleptic Gregorian calendar, UTC.
struct Civil {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 1..=366
    day_of_year: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// Seconds since 1970-01-01T00:00:00Z as a civil date: the era-of-400-years method (every
/// 400 years repeat the same 146097 days), with years counted from March so that the leap
/// day ends a year.
fn civil(secs: i64) -> Civil {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..399
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..365, from March 1
    let mp = (5 * doy_march + 2) / 153; // month from March, 0..11
    let day = (doy_march - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = before[month as usize - 1] + day + u32::from(leap && month > 2);
    Civil {
        year,
        month,
        day,
        weekday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
        day_of_year,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
    }
}

/// `format` with `%Y %y %m %d %e %j %H %I %M %S %p %B %b %h %A %a %F %T %%` replaced; another
/// directive is an error naming it.
fn format_time(format: &str, secs: i64) -> Result<String, Error> {
    let c = civil(secs);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let month = MONTHS[c.month as usize - 1];
        let weekday = WEEKDAYS[c.weekday as usize];
        let hour12 = (c.hour + 11) % 12 + 1;
        match chars.next() {
            Some('Y') => out.push_str(&c.year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", c.year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{:02}", c.month)),
            Some('d') => out.push_str(&format!("{:02}", c.day)),
            Some('e') => out.push_str(&format!("{:2}", c.day)),
            Some('j') => out.push_str(&format!("{:03}", c.day_of_year)),
            Some('H') => out.push_str(&format!("{:02}", c.hour)),
            Some('I') => out.push_str(&format!("{hour12:02}")),
            Some('M') => out.push_str(&format!("{:02}", c.minute)),
            Some('S') => out.push_str(&format!("{:02}", c.second)),
            Some('p') => out.push_str(if c.hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('F') => out.push_str(&format!("{}-{:02}-{:02}", c.year, c.month, c.day)),
            Some('T') => out.push_str(&format!("{:02}:{:02}:{:02}", c.hour, c.minute, c.second)),
            Some('%') => out.push('%'),
            other => {
                let d = other.map_or("%".to_string(), |o| format!("%{o}"));
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive '{d}' in {format:?}"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known instants (their dates by the calendar): the epoch, a leap day, the day after a
    /// century non-leap February, a year end, a far date.
    #[test]
    fn formats_known_instants() {
        let f = |s: &str, secs: i64| format_time(s, secs).unwrap();
        assert_eq!(
            f("%Y-%m-%d %H:%M:%S %a %j", 0),
            "1970-01-01 00:00:00 Thu 001"
        );
        // 2024-02-29T13:05:09Z: 19782 days after the epoch.
        let leap = 19_782 * 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(
            f("%d %b %Y, %A %I:%M %p, day %j", leap),
            "29 Feb 2024, Thursday 01:05 PM, day 060"
        );
        // 2100-03-01 (2100 is not a leap year): 47541 days.
        assert_eq!(f("%F %B %e %y", 47_541 * 86_400), "2100-03-01 March  1 00");
        // 1999-12-31T23:59:59Z.
        assert_eq!(
            f("%F %T %j 100%%", 946_684_799),
            "1999-12-31 23:59:59 365 100%"
        );
        assert!(format_time("%Q", 0)
            .unwrap_err()
            .to_string()
            .contains("'%Q'"));
        assert!(format_time("50%", 0).is_err());
    }

    /// In a template, today's UTC date as the system's `date -u` prints it (read before and
    /// after, in case the day turns between).
    #[test]
    fn templates_get_the_current_date() {
        let date = || {
            let out = std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%d %b %A"])
                .output()
                .expect("the date command");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let before = date();
        let t = "{{ strftime_now('%Y-%m-%d %b %A') }}";
        let got = crate::tokenizer::chat::render(t, &[], false, "", "").unwrap();
        assert!(got == before || got == date(), "{got} vs {before}");
    }
}
