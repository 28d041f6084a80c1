# closewait: `make` builds libclosewait.so here; `make test`, `make demo`, `make install`, `make man`,
# `make deb`.
CC ?= cc
PREFIX ?= /usr/local
CFLAGS ?= -O2 -g
# The version is said once, in src/watcher/internal.h (closewait_version() returns it); the man
# pages and the Debian package (debian/changelog is written by tools/build-deb.sh) take it there.
VERSION := $(shell sed -n 's/^.define CLOSEWAIT_VERSION "\(.*\)"$$/\1/p' src/watcher/internal.h)
# As GNUInstallDirs does on Debian: the multiarch directory when PREFIX is /usr, so that
# `make install PREFIX=/usr` installs what the package does; PREFIX/lib elsewhere (/usr/local/lib).
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)
LIBDIR ?= $(if $(and $(filter /usr /usr/,$(PREFIX)),$(MULTIARCH)),$(PREFIX)/lib/$(MULTIARCH),$(PREFIX)/lib)
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/closewait
WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-format-nonliteral
CW_CFLAGS := -std=gnu11 -fPIC -fvisibility=hidden -pthread $(WARN) -Iinclude -Isrc \
             -fno-omit-frame-pointer -D_FORTIFY_SOURCE=2
# libdw is dlopen'ed at run time (src/unwind/symbolize.c): only its headers are needed here.
# The unwinder behind src/unwind/cfi.c is libgcc's, linked in (-static-libgcc) and hidden by
# the version script: no library is loaded for it.  -z noseparate-code: the headers, text and
# read-only data in one mapping instead of three; every mapping of the process is copied by each
# fork() (about 1.5 us apiece here, BENCHMARKS.md section 15).
CW_LDFLAGS := -shared -pthread -ldl -static-libgcc -Wl,--version-script=src/exports.map \
              -Wl,-z,relro,-z,now -Wl,-z,noseparate-code -Wl,--no-undefined

SRCS := $(filter-out src/ebpf/%,$(wildcard src/*.c src/*/*.c))
HDRS := $(wildcard src/*.h src/*/*.h src/*/*.def) include/closewait.h
BUILD ?= build/release
OBJS := $(SRCS:src/%.c=$(BUILD)/%.o)
LIB ?= libclosewait.so

.PHONY: all deps test demo install clean asan tsan check-syms lint bench fuzz man deb ebpf

all: deps $(LIB) ebpf

deps:
	@sh tools/ensure-deps.sh

$(BUILD)/%.o: src/%.c $(HDRS) | $(BUILD)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(CW_CFLAGS) -c -o $@ $<

$(BUILD):
	mkdir -p $@

$(LIB): $(OBJS) src/exports.map
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(OBJS) $(CW_LDFLAGS)

# The eBPF front-end (closewait-ebpf, src/ebpf/): the watcher, reports and symbolizer of the
# library compiled into a program of its own (no hooks), with a BPF object and its skeleton.
# Built only where clang, bpftool, libbpf's headers and the kernel's BTF are there.
EBPF_BIN := closewait-ebpf
EBPF_BUILD := build/ebpf
BPFTOOL ?= $(firstword $(shell command -v bpftool 2>/dev/null) $(wildcard /usr/sbin/bpftool /sbin/bpftool))
EBPF_MISSING := $(strip $(if $(shell command -v clang 2>/dev/null),,clang) \
  $(if $(BPFTOOL),,bpftool) \
  $(if $(wildcard /usr/include/bpf/libbpf.h),,libbpf-dev) \
  $(if $(wildcard /sys/kernel/btf/vmlinux),,/sys/kernel/btf/vmlinux))
EBPF_CORE := $(filter-out src/hooks/% src/watcher/start.c src/watcher/process.c,$(SRCS))
EBPF_OBJS := $(EBPF_CORE:src/%.c=$(EBPF_BUILD)/core/%.o) $(EBPF_BUILD)/main.o $(EBPF_BUILD)/remote_unwind.o

ifeq ($(EBPF_MISSING),)
ebpf: $(EBPF_BIN)
else
ebpf:
	@echo "closewait: not building closewait-ebpf (--attach, --ebpf): missing $(EBPF_MISSING)"
endif

$(EBPF_BUILD)/vmlinux.h:
	@mkdir -p $(dir $@)
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(EBPF_BUILD)/closewait.bpf.o: src/ebpf/closewait.bpf.c src/ebpf/events.h $(EBPF_BUILD)/vmlinux.h
	clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I$(EBPF_BUILD) -Isrc/ebpf -c -o $@ $<

$(EBPF_BUILD)/closewait.skel.h: $(EBPF_BUILD)/closewait.bpf.o
	$(BPFTOOL) gen skeleton $< name closewait_bpf > $@.tmp && mv $@.tmp $@

$(EBPF_BUILD)/core/%.o: src/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter-out -fPIC,$(CW_CFLAGS)) -ffunction-sections -c -o $@ $<

$(EBPF_BUILD)/%.o: src/ebpf/%.c src/ebpf/*.h $(EBPF_BUILD)/closewait.skel.h $(HDRS)
	$(CC) $(CFLAGS) $(filter-out -fPIC,$(CW_CFLAGS)) -I$(EBPF_BUILD) -c -o $@ $<

$(EBPF_BIN): $(EBPF_OBJS)
	$(CC) $(CFLAGS) -o $@ $(EBPF_OBJS) -pthread -ldl -lbpf -ldw -lelf -Wl,--gc-sections -Wl,-z,relro,-z,now

# Sanitizer builds of the library, for running the suite under ASan+UBSan and TSan.
asan:
	$(MAKE) BUILD=build/asan LIB=build/asan/libclosewait.so \
	  CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined" build/asan/libclosewait.so
tsan:
	$(MAKE) BUILD=build/tsan LIB=build/tsan/libclosewait.so \
	  CFLAGS="-O1 -g -fsanitize=thread" build/tsan/libclosewait.so

# Exported symbols must be exactly the hooks and the public API.
check-syms: $(LIB)
	@nm -D --defined-only $(LIB) | awk '{print $$3}' | grep -v '^_' | sort > build/syms.txt || true
	@cat build/syms.txt

test: all
	$(MAKE) -C tests
	@if [ -f tests/hostile/Makefile ]; then $(MAKE) -C tests/hostile; fi
	python3 tests/run-all.py

demo: all
	@sh demo/run-demo.sh

bench: all
	@sh bench/run.sh

# libFuzzer on the option parser and the JSON writer; FUZZ_SECONDS per harness (default 15).
fuzz:
	sh fuzz/run.sh

# The man pages are mdoc(7) sources in man/; only the version is filled in.
MANS := build/man/closewait.1 build/man/closewait-report.1 build/man/closewait.7
man: $(MANS)

build/man/%: man/% src/watcher/internal.h
	@mkdir -p build/man
	sed 's/@VERSION@/$(VERSION)/g' $< > $@

# closewait_VERSION_ARCH.deb in build/deb/, built by dpkg-buildpackage from a copy of the tree.
deb: deps
	sh tools/build-deb.sh build/deb

lint: $(if $(EBPF_MISSING),,$(EBPF_BUILD)/closewait.skel.h)
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
	  --suppress=missingIncludeSystem --inline-suppr -Iinclude -Isrc -i src/ebpf/closewait.bpf.c src/
	clang-tidy --quiet $(SRCS) -- -std=gnu11 -Iinclude -Isrc
	@# bpftool's generated skeleton leaks on a path of its own error handling: unix.Malloc is off here.
	$(if $(EBPF_MISSING),,clang-tidy --quiet --checks=-clang-analyzer-unix.Malloc src/ebpf/main.c src/ebpf/remote_unwind.c \
	  -- -std=gnu11 -Iinclude -Isrc -I$(EBPF_BUILD))

install: all man
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(LIB) $(DESTDIR)$(LIBDIR)/libclosewait.so
	install -m 0644 include/closewait.h $(DESTDIR)$(PREFIX)/include/closewait.h
	sed 's|^CLOSEWAIT_DEFAULT_LIB=.*|CLOSEWAIT_DEFAULT_LIB=$(LIBDIR)/libclosewait.so|' tools/closewait \
	  > $(DESTDIR)$(PREFIX)/bin/closewait && chmod 0755 $(DESTDIR)$(PREFIX)/bin/closewait
	install -m 0755 tools/closewait-report $(DESTDIR)$(PREFIX)/bin/closewait-report
	if [ -f $(EBPF_BIN) ]; then install -d $(DESTDIR)$(PREFIX)/lib/closewait && \
	  install -m 0755 $(EBPF_BIN) $(DESTDIR)$(PREFIX)/lib/closewait/closewait-ebpf && \
	  sed -i 's|^CLOSEWAIT_DEFAULT_EBPF=.*|CLOSEWAIT_DEFAULT_EBPF=$(PREFIX)/lib/closewait/closewait-ebpf|' \
	    $(DESTDIR)$(PREFIX)/bin/closewait; fi
	install -d $(DESTDIR)$(PREFIX)/lib/closewait/closewait_report
	install -m 0644 tools/closewait_report/*.py $(DESTDIR)$(PREFIX)/lib/closewait/closewait_report/
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(DOCDIR)
	install -m 0644 build/man/closewait.1 build/man/closewait-report.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 build/man/closewait.7 $(DESTDIR)$(MANDIR)/man7/
	install -m 0644 README.md docs/CONTRACT.md docs/report.md $(DESTDIR)$(DOCDIR)/
	install -d $(DESTDIR)$(PREFIX)/lib/closewait/langs/python $(DESTDIR)$(PREFIX)/lib/closewait/langs/node
	install -m 0644 tools/langs/python/sitecustomize.py $(DESTDIR)$(PREFIX)/lib/closewait/langs/python/
	@# compiled now, when installing for this machine: a program that cannot write there would
	@# compile it at each start (~6 ms); a package leaves it to its own post-install
	$(if $(DESTDIR),,-python3 -m compileall -q $(PREFIX)/lib/closewait/langs/python)
	install -m 0644 tools/langs/node/closewait.js $(DESTDIR)$(PREFIX)/lib/closewait/langs/node/

clean:
	rm -rf build $(LIB) $(EBPF_BIN)
	-$(MAKE) -C tests clean 2>/dev/null
