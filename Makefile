# libllorch for C and C++ users.
#
#   make                                   build target/release/libllorch.so (cargo) for use in
#                                          the tree: its SONAME link and an uninstalled llorch.pc
#   make install PREFIX=/usr/local         install the library (built by cargo's `dist` profile
#                                          in target/dist: release code with line tables),
#                                          header, pkg-config file and CMake package
#                                          (DESTDIR= stages for packaging)
#   make uninstall PREFIX=/usr/local
#
# Installed: $(LIBDIR)/libllorch.so.<release> (stripped; its debug info in
# $(LIBDIR)/.debug/, where gdb looks), the links libllorch.so.<ABI> (the SONAME) and
# libllorch.so, $(INCLUDEDIR)/llorch.h, $(LIBDIR)/pkgconfig/llorch.pc and
# $(LIBDIR)/cmake/llorch/llorchConfig{,Version}.cmake.

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DESTDIR    ?=
CARGO      ?= cargo
OBJCOPY    ?= objcopy
BUILD      := target/release
# What `make install` installs: release code with line tables (Cargo.toml's `dist` profile).
DIST       := target/dist

# Both versions come from the committed header (tests/ffi_header.rs keeps it equal to
# Cargo.toml and src/ffi).
header_macro = $(shell sed -n 's/^.define $(1) "*\([^"]*\)"*$$/\1/p' include/llorch.h)
VERSION  := $(call header_macro,LLORCH_VERSION_STRING)
MAJOR    := $(call header_macro,LLORCH_VERSION_MAJOR)
MINOR    := $(call header_macro,LLORCH_VERSION_MINOR)
ABI      := $(call header_macro,LLORCH_ABI_VERSION)
REALNAME := libllorch.so.$(VERSION)
SONAME   := libllorch.so.$(ABI)

# fill_template(template, output, prefix, libdir, includedir, extra libs)
fill_template = sed -e 's|@PREFIX@|$(3)|g' -e 's|@LIBDIR@|$(4)|g' -e 's|@INCLUDEDIR@|$(5)|g' \
	-e 's|@LIBS_EXTRA@|$(6)|g' -e 's|@VERSION@|$(VERSION)|g' -e 's|@VERSION_MAJOR@|$(MAJOR)|g' \
	-e 's|@VERSION_MINOR@|$(MINOR)|g' -e 's|@ABI@|$(ABI)|g' -e 's|@REALNAME@|$(REALNAME)|g' \
	-e 's|@SONAME@|$(SONAME)|g' $(1) > $(2)

all: build
	ln -sf libllorch.so $(BUILD)/$(SONAME)
	mkdir -p $(BUILD)/pkgconfig
	$(call fill_template,packaging/llorch.pc.in,$(BUILD)/pkgconfig/llorch-uninstalled.pc,$(CURDIR),$(CURDIR)/$(BUILD),$(CURDIR)/include, -Wl$(,)-rpath$(,)$${libdir})

# Cargo knows what is out of date.
build:
	$(CARGO) build --release

dist:
	$(CARGO) build --profile dist --lib

install: dist
	install -d $(DESTDIR)$(LIBDIR)/.debug $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(LIBDIR)/cmake/llorch $(DESTDIR)$(INCLUDEDIR)
	$(OBJCOPY) --only-keep-debug $(DIST)/libllorch.so $(DESTDIR)$(LIBDIR)/.debug/$(REALNAME).debug
	chmod 644 $(DESTDIR)$(LIBDIR)/.debug/$(REALNAME).debug
	$(OBJCOPY) --strip-unneeded --add-gnu-debuglink=$(DESTDIR)$(LIBDIR)/.debug/$(REALNAME).debug \
		$(DIST)/libllorch.so $(DESTDIR)$(LIBDIR)/$(REALNAME)
	chmod 755 $(DESTDIR)$(LIBDIR)/$(REALNAME)
	ln -sf $(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libllorch.so
	install -m 644 include/llorch.h $(DESTDIR)$(INCLUDEDIR)/llorch.h
	$(call fill_template,packaging/llorch.pc.in,$(DESTDIR)$(LIBDIR)/pkgconfig/llorch.pc,$(PREFIX),$(LIBDIR),$(INCLUDEDIR),)
	$(call fill_template,packaging/llorchConfig.cmake.in,$(DESTDIR)$(LIBDIR)/cmake/llorch/llorchConfig.cmake,$(PREFIX),$(LIBDIR),$(INCLUDEDIR),)
	$(call fill_template,packaging/llorchConfigVersion.cmake.in,$(DESTDIR)$(LIBDIR)/cmake/llorch/llorchConfigVersion.cmake,$(PREFIX),$(LIBDIR),$(INCLUDEDIR),)
	@echo "installed llorch $(VERSION) (SONAME $(SONAME)) under $(DESTDIR)$(PREFIX)"

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libllorch.so \
		$(DESTDIR)$(LIBDIR)/.debug/$(REALNAME).debug $(DESTDIR)$(INCLUDEDIR)/llorch.h \
		$(DESTDIR)$(LIBDIR)/pkgconfig/llorch.pc $(DESTDIR)$(LIBDIR)/cmake/llorch/llorchConfig.cmake \
		$(DESTDIR)$(LIBDIR)/cmake/llorch/llorchConfigVersion.cmake
	-rmdir $(DESTDIR)$(LIBDIR)/cmake/llorch $(DESTDIR)$(LIBDIR)/.debug 2>/dev/null

, := ,
.PHONY: all build dist install uninstall
