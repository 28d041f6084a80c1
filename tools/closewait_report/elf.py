"""closewait-report: ELF reading (headers only) for load bases, build ids and debug links."""

import os
import stat
import struct
import zlib

# ELF reading (headers only) for load bases, build ids and debug links

class ElfInfo:
    def __init__(self):
        self.etype = None
        self.min_vaddr = 0
        self.build_id = None
        self.debuglink = None
        self.debuglink_crc = None


def _usable_file(path):
    if not path or not path.startswith("/") or "\x00" in path:
        return False
    if path.startswith(("/proc/", "/sys/", "/dev/")):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _parse_notes(data, e):
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, off)
        off += 12
        name = data[off:off + namesz]
        off += (namesz + 3) & ~3
        desc = data[off:off + descsz]
        off += (descsz + 3) & ~3
        if ntype == 3 and name.rstrip(b"\x00") == b"GNU" and desc:
            return desc.hex()
        if namesz > len(data) or descsz > len(data):
            break
    return None


def read_elf_info(path):
    """Header facts of an ELF file, or None if it is not one (or cannot be read)."""
    if not _usable_file(path):
        return None
    try:
        with open(path, "rb") as f:
            ident = f.read(16)
            if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) \
                    or ident[5] not in (1, 2):
                return None
            is64 = ident[4] == 2
            e = "<" if ident[5] == 1 else ">"
            if is64:
                hdr = struct.unpack(e + "HHIQQQIHHHHHH", f.read(48))
            else:
                hdr = struct.unpack(e + "HHIIIIIHHHHHH", f.read(36))
            (etype, _m, _v, _entry, phoff, shoff, _fl, _eh, phentsize, phnum,
             shentsize, shnum, shstrndx) = hdr
            info = ElfInfo()
            info.etype = etype
            loads = []
            notes_ph = []
            if phoff and 0 < phnum <= 4096 and phentsize >= (56 if is64 else 32):
                f.seek(phoff)
                data = f.read(phentsize * phnum)
                for i in range(phnum):
                    chunk = data[i * phentsize:(i + 1) * phentsize]
                    if len(chunk) < (56 if is64 else 32):
                        break
                    if is64:
                        p_type, _pf, p_off, p_vaddr, _pa, p_filesz, _pm, _al = \
                            struct.unpack_from(e + "IIQQQQQQ", chunk)
                    else:
                        p_type, p_off, p_vaddr, _pa, p_filesz, _pm, _pf, _al = \
                            struct.unpack_from(e + "IIIIIIII", chunk)
                    if p_type == 1:
                        loads.append(p_vaddr)
                    elif p_type == 4 and p_filesz <= 65536:
                        notes_ph.append((p_off, p_filesz))
            if loads:
                info.min_vaddr = min(loads) & ~0xFFF
            sections = []
            if shoff and 0 < shnum <= 65535 and shentsize >= (64 if is64 else 40):
                f.seek(shoff)
                data = f.read(shentsize * shnum)
                for i in range(shnum):
                    chunk = data[i * shentsize:(i + 1) * shentsize]
                    if len(chunk) < (64 if is64 else 40):
                        break
                    if is64:
                        (sh_name, sh_type, _f, _a, sh_off, sh_size, _l, _i, _al,
                         _es) = struct.unpack_from(e + "IIQQQQIIQQ", chunk)
                    else:
                        (sh_name, sh_type, _f, _a, sh_off, sh_size, _l, _i, _al,
                         _es) = struct.unpack_from(e + "IIIIIIIIII", chunk)
                    sections.append((sh_name, sh_type, sh_off, sh_size))
            names = {}
            if sections and shstrndx < len(sections):
                _n, _t, stroff, strsize = sections[shstrndx]
                if strsize <= (1 << 20):
                    f.seek(stroff)
                    strtab = f.read(strsize)
                    for idx, (sh_name, _t, _o, _s) in enumerate(sections):
                        end = strtab.find(b"\x00", sh_name)
                        if sh_name < len(strtab) and end >= 0:
                            names[idx] = strtab[sh_name:end].decode("latin-1")
            for idx, (_n, sh_type, sh_off, sh_size) in enumerate(sections):
                name = names.get(idx, "")
                if sh_type == 7 and sh_size <= 65536 and info.build_id is None:
                    f.seek(sh_off)
                    info.build_id = _parse_notes(f.read(sh_size), e)
                elif name == ".gnu_debuglink" and sh_type != 8 and 4 < sh_size <= 4096:
                    f.seek(sh_off)
                    data = f.read(sh_size)
                    end = data.find(b"\x00")
                    if end > 0:
                        link = data[:end].decode("utf-8", "replace")
                        crc_off = (end + 4) & ~3
                        if crc_off + 4 <= len(data):
                            info.debuglink_crc = struct.unpack_from(e + "I", data, crc_off)[0]
                        info.debuglink = os.path.basename(link)
            if info.build_id is None:
                for p_off, p_filesz in notes_ph:
                    f.seek(p_off)
                    bid = _parse_notes(f.read(p_filesz), e)
                    if bid:
                        info.build_id = bid
                        break
            return info
    except (OSError, struct.error, ValueError, OverflowError):
        return None


def file_crc32(path):
    crc = 0
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    return crc & 0xFFFFFFFF
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return None
