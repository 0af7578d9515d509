"""Turns a .cu source into a loaded shared library for the CPU emulator.

Steps: rewrite `__shared__` declarations (same line count), preprocess the source
with g++ to find its kernels and which of them need fibers, append trampolines
that export a kernel table, compile with cuda_emu.h force-included, and cache
the .so by a hash of everything that goes into it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "cuda_emu.h")
# stand-ins for toolkit headers (<mma.h>) whose contents cuda_emu.h defines; searched first
SHIM_INCLUDE = os.path.join(HERE, "include")
CXX = os.environ.get("CUDA_EMU_CXX", "g++")
BASE_FLAGS = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden",
              "-fvisibility-inlines-hidden", "-w"]
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
# Seen by both the preprocessing scan and the compile, so #if blocks agree.
DEFINES = ["-D__CUDACC__", "-D__CUDACC_RTC__", "-D__CUDA_ARCH__=800", "-DCUDA_EMU=1"]
SYNC_RE = re.compile(r"\b(__syncthreads\w*|__syncwarp|__shfl\w*|__ballot_sync|__any_sync|__all_sync"
                     r"|__match_\w+_sync|__reduce_\w+_sync|__activemask|mma_sync)\b")
IDENT_RE = re.compile(r"[A-Za-z_]\w*")
CONTROL = {"if", "for", "while", "switch", "catch", "return", "sizeof", "decltype", "alignof",
           "__attribute__", "__launch_bounds__", "__align__", "alignas", "defined"}
TYPE_WORDS = {"const", "volatile", "unsigned", "signed", "int", "float", "double", "char", "short",
              "long", "bool", "void", "__restrict__", "__restrict", "restrict", "struct"}


class CompileError(RuntimeError):
    """g++ rejected a .cu file; the message holds its output (file:line: error: ...)."""


# ---------------------------------------------------------------- text scanning
_BLANK_RE = re.compile(r"""//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""", re.S)
_BLANK_DIR_RE = re.compile(r"""^[ \t]*#(?:[^\n]*\\\n)*[^\n]*|//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""",
                           re.S | re.M)


def _spaces(m: re.Match) -> str:
    return re.sub(r"[^\n]", " ", m.group(0))


def blank_comments_strings(text: str, directives: bool = True) -> str:
    """Same length as text, newlines kept: comments, string and char literals (and,
    if asked, preprocessor directive lines) become spaces."""
    return (_BLANK_DIR_RE if directives else _BLANK_RE).sub(_spaces, text)


@dataclass
class Func:
    name: str          # qualified by enclosing namespaces
    decl: str          # text from the previous ; { } up to the body's {
    params: str
    body: str
    is_kernel: bool
    is_template: bool
    start: int = 0     # offsets of the body's braces
    end: int = 0


def _match_paren_back(s: str, close: int) -> int:
    depth = 0
    for i in range(close, -1, -1):
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _function_header(seg: str):
    """(name, params) if seg (a declaration ending where a { starts) is a function header."""
    s = seg.rstrip()
    # trailing qualifiers: const, noexcept, override, final, __attribute__((...)) are rare; allow words
    while True:
        m = re.search(r"\b(const|noexcept|override|final|mutable)\s*$", s)
        if not m:
            break
        s = s[: m.start()].rstrip()
    if not s.endswith(")"):
        return None
    open_ = _match_paren_back(s, len(s) - 1)
    if open_ < 0:
        return None
    m = re.search(r"([A-Za-z_][\w:]*)\s*(<[^(){};]*>)?\s*$", s[:open_])
    if not m or m.group(1).split("::")[-1] in CONTROL:
        return None
    return m.group(1), s[open_ + 1 : len(s) - 1]


def scan(text: str):
    """Walks braces of blanked text. Returns (functions, scope_at) where scope_at(pos)
    tells whether pos lies at namespace scope and under which namespace names."""
    funcs: list[Func] = []
    stack: list[tuple[str, str, int, tuple]] = []  # (kind, ns name, start, func header)
    seg_start = 0
    ns_regions: list[tuple[int, int, tuple]] = []  # (start, end, namespace path) of non-namespace code
    depth_nonns_start = None
    for mt in re.finditer(r"[{};]", text):
        i, c = mt.start(), mt.group(0)
        if c == "{":
            seg = text[seg_start:i]
            kind, name, hdr = "other", "", None
            m = re.search(r"\b(?:inline\s+)?namespace\s*([A-Za-z_]\w*)?\s*$", seg)
            if m:
                kind, name = "ns", m.group(1) or ""
            elif re.search(r"\bextern\s*\"C(\+\+)?\"\s*$", text[seg_start:i]) or \
                    re.search(r"\bextern\s+$", seg):
                kind = "ns"  # extern "C" { } (the literal itself was blanked)
            else:
                hdr = _function_header(seg)
                if hdr:
                    kind = "func"
            if kind != "ns" and all(k == "ns" for k, *_ in stack):
                depth_nonns_start = i
            stack.append((kind, name, i, (hdr, seg)))
            seg_start = i + 1
        elif c == "}":
            if stack:
                kind, name, start, (hdr, seg) = stack.pop()
                if kind == "func":
                    ns = [nm for k, nm, *_ in stack if k == "ns" and nm]
                    qual = "::".join(ns + [hdr[0]])
                    funcs.append(Func(qual, seg, hdr[1], text[start + 1 : i],
                                      "__global__" in seg.split(),
                                      bool(re.match(r"\s*template\b", seg)), start, i))
                if kind != "ns" and all(k == "ns" for k, *_ in stack) and depth_nonns_start is not None:
                    ns_regions.append((depth_nonns_start, i, tuple(nm for _k, nm, *_ in stack if nm)))
                    depth_nonns_start = None
            seg_start = i + 1
        else:
            seg_start = i + 1
    return funcs, ns_regions


def _in_function(pos: int, regions) -> bool:
    return any(a < pos < b for a, b, _ in regions)


def _namespace_at(text: str, pos: int) -> list[str]:
    """Names of the namespaces open at pos (for qualifying namespace-scope names)."""
    stack = []
    seg_start = 0
    for mt in re.finditer(r"[{};]", text[:pos]):
        i, c = mt.start(), mt.group(0)
        if c == "{":
            m = re.search(r"\bnamespace\s*([A-Za-z_]\w*)?\s*$", text[seg_start:i])
            stack.append((m.group(1) or "") if m else None)
            seg_start = i + 1
        elif c == "}":
            if stack:
                stack.pop()
            seg_start = i + 1
        else:
            seg_start = i + 1
    return [s for s in stack if s]


# ---------------------------------------------------------------- __shared__ rewriting
_DYN_RE = re.compile(r"\bextern\s+__shared__\s+([^;]*?)\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_STATIC_RE = re.compile(r"\b__shared__\b([^;]*);")
_ALIGN_RE = re.compile(r"\b(__align__|alignas|__attribute__)\s*\((?:[^()]|\([^()]*\))*\)")


def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([<{":
            depth += 1
        elif ch in ")]>}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def rewrite_shared(src: str):
    """Returns (new source, block-hook statements). Keeps every line where it was.

    extern __shared__ T a[];  ->  T* const a = (T*)::__emu::dyn_smem();   (in a function)
                                  static thread_local T* a;  + hook sets it  (namespace scope)
    __shared__ T b[N];        ->  unchanged, plus a per-block 0xFF fill (first thread to pass)
    """
    blank = blank_comments_strings(src)
    _funcs, regions = scan(blank)
    edits = []  # (start, end, replacement)
    hook = []
    taken = set()
    for m in _DYN_RE.finditer(blank):
        typ = _ALIGN_RE.sub(" ", src[m.start(1) : m.end(1)]).strip()
        name = m.group(2)
        taken.add(m.start())
        if _in_function(m.start(), regions):
            rep = f"{typ}* const {name} = ({typ}*)::__emu::dyn_smem();"
        else:
            rep = f"static thread_local {typ}* {name};"
            qual = "::".join(_namespace_at(blank, m.start()) + [name])
            hook.append(f"{qual} = ({typ}*)::__emu::dyn_smem();")
        edits.append((m.start(), m.end(), rep))
    for m in _STATIC_RE.finditer(blank):
        pre = blank[max(0, m.start() - 40) : m.start()]
        if re.search(r"\bextern\s+$", pre):
            continue
        names = []
        for decl in _split_top(m.group(1)):
            d = re.sub(r"\s+", " ", _ALIGN_RE.sub(" ", decl)).strip()
            nm = re.search(r"([A-Za-z_]\w*)\s*(\[[^\]]*\]\s*)*$", d)
            if nm:
                names.append(nm.group(1))
        if not names:
            continue
        if _in_function(m.start(), regions):
            tag = f"__emu_ep_{m.start()}"
            add = "".join(f" static thread_local unsigned long long {tag}_{k};"
                          f" ::__emu::poison_once((void*)&{nm}, sizeof({nm}), {tag}_{k});"
                          for k, nm in enumerate(names))
            edits.append((m.end(), m.end(), add))
        else:
            ns = _namespace_at(blank, m.start())
            hook.extend(f"memset((void*)&{'::'.join(ns + [nm])}, 0xFF, sizeof({'::'.join(ns + [nm])}));"
                        for nm in names)
    out = src
    for a, b, rep in sorted(edits, key=lambda e: e[0], reverse=True):
        out = out[:a] + rep + out[b:]
    assert out.count("\n") == src.count("\n")
    return out, hook


# ---------------------------------------------------------------- kernels and fibers
@dataclass
class KernelDecl:
    name: str                  # as written in C++ (maybe ns::name or name<T>)
    params: list[tuple[str, str]] = field(default_factory=list)  # (type text, name)
    fibers: bool = True


def parse_params(text: str) -> list[tuple[str, str]]:
    text = text.strip()
    if not text or text == "void":
        return []
    out = []
    for p in _split_top(text):
        p = re.sub(r"\s+", " ", p.split("=")[0]).strip()
        toks = re.findall(r"[A-Za-z_]\w*|\S", p)
        name = ""
        if len(toks) > 1 and re.match(r"[A-Za-z_]", toks[-1]) and toks[-1] not in TYPE_WORDS:
            name = toks[-1]
            p = p[: p.rfind(name)].strip()
        out.append((p, name))
    return out


_MARKER_RE = re.compile(r'^# (\d+) "((?:[^"\\]|\\.)*)"((?: \d)*)$', re.M)


def user_text(pp_text: str) -> str:
    """The parts of g++ -E output that come from the user's files, not system headers."""
    out, pos, keep = [], 0, True
    for m in _MARKER_RE.finditer(pp_text):
        if keep:
            out.append(pp_text[pos : m.start()])
        flags = m.group(3).split()
        name = m.group(2)
        keep = "3" not in flags and not name.startswith("<")
        pos = m.end()
    if keep:
        out.append(pp_text[pos:])
    return "\n".join(out)


def find_kernels(pp_text: str) -> tuple[list[KernelDecl], set[str]]:
    """Kernels defined in preprocessed source, and the names of functions that
    (transitively) use a barrier or a warp op."""
    blank = blank_comments_strings(user_text(pp_text))
    funcs, _ = scan(blank)
    idents = {}
    sync = set()
    for f in funcs:
        short = f.name.split("::")[-1]
        idents.setdefault(short, set()).update(IDENT_RE.findall(f.body))
        if SYNC_RE.search(f.body):
            sync.add(short)
    # A barrier or warp op outside every recognized function (a lambda, an operator()):
    # the call graph is unknown, so every kernel gets fibers.
    everywhere = any(not any(f.start < m.start() < f.end for f in funcs) for m in SYNC_RE.finditer(blank))
    changed = True
    while changed:  # fixpoint over the call graph, by name
        changed = False
        for name, ids in idents.items():
            if name not in sync and ids & sync:
                sync.add(name)
                changed = True
    kernels, seen = [], set()
    for f in funcs:
        if not f.is_kernel or f.is_template or f.name in seen:
            continue
        seen.add(f.name)
        kernels.append(KernelDecl(f.name, parse_params(f.params), everywhere or f.name.split("::")[-1] in sync))
    return kernels, sync


# ---------------------------------------------------------------- build
def _c_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def trampolines(kernels: list[KernelDecl], hook: list[str], force_fibers: bool = False) -> str:
    lines = ['#line 1 "<cuda_emu trampolines>"', "static void __emu_block_hook() {"]
    lines += [f"    {h}" for h in hook]
    lines.append("}")
    lines.append("static const ::__emu::KernelEntry __emu_kernels[] = {")
    for k in kernels:
        sig = f"::__emu::Sig<decltype({k.name})>"
        pnames = ",".join(nm for _t, nm in k.params)
        lines.append(f"    {{{_c_str(k.name)}, {_c_str(pnames)}, &{sig}::body<&{k.name}>, "
                     f"&{sig}::codes, {int(k.fibers or force_fibers)}}},")
    if not kernels:
        lines.append("    {nullptr, nullptr, nullptr, nullptr, 0},")
    lines.append("};")
    exp = 'extern "C" __attribute__((visibility("default")))'
    lines += [
        f"{exp} int cuda_emu_kernel_count() {{ return {len(kernels)}; }}",
        f"{exp} const char* cuda_emu_kernel_name(int i) {{ return __emu_kernels[i].name; }}",
        f"{exp} const char* cuda_emu_kernel_params(int i) {{ return __emu_kernels[i].param_names; }}",
        f"{exp} int cuda_emu_kernel_fibers(int i) {{ return __emu_kernels[i].fibers; }}",
        f"{exp} void cuda_emu_kernel_codes(int i, char* buf, unsigned long n) {{ __emu_kernels[i].codes(buf, n); }}",
        f"{exp} const char* cuda_emu_last_error() {{ return ::__emu::g_last_error; }}",
        f"{exp} int cuda_emu_launch(int i, const ::__emu::LaunchCfg* cfg, void** args) {{",
        "    return ::__emu::launch(cfg, __emu_kernels[i].body, args, __emu_kernels[i].name, &__emu_block_hook);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def cache_dir() -> str:
    if os.environ.get("CGANRAW_CACHE_DIR"):
        d = os.path.join(os.environ["CGANRAW_CACHE_DIR"], "emu")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "cganraw", "emu")
    os.makedirs(d, exist_ok=True)
    return d


@functools.cache
def _compiler_id() -> str:
    try:
        return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise CompileError(f"cuda_emu needs a C++20 compiler ({CXX}): {e}") from e


@functools.cache
def _read(path: str, mtime: float) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_text(path: str) -> str:
    return _read(path, os.stat(path).st_mtime)


_INC_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def local_includes(src: str, src_dir: str, include_dirs: list[str], seen=None) -> list[tuple[str, str]]:
    """(path, text) of the quoted includes, recursively: they belong in the cache key."""
    seen = set() if seen is None else seen
    out = []
    for inc in _INC_RE.findall(src):
        for d in [src_dir, *include_dirs]:
            p = os.path.abspath(os.path.join(d, inc))
            if os.path.isfile(p):
                if p not in seen:
                    seen.add(p)
                    text = read_text(p)
                    out.append((p, text))
                    out += local_includes(text, os.path.dirname(p), include_dirs, seen)
                break
    return out


def translate_options(options) -> tuple[list[str], list[str]]:
    """CuPy/NVRTC options -> (g++ flags, include dirs). Code-generation options are dropped."""
    flags, incs = [], []
    opts = list(options or ())
    i = 0
    while i < len(opts):
        o = str(opts[i])
        nxt = str(opts[i + 1]) if i + 1 < len(opts) else None
        if o in ("-D", "-U", "-I", "--define-macro", "--undefine-macro", "--include-path") and nxt is not None:
            o, i = o + ("=" if o.startswith("--") else "") + nxt, i + 1
        for long, short in (("--define-macro=", "-D"), ("--undefine-macro=", "-U"), ("--include-path=", "-I")):
            if o.startswith(long):
                o = short + o[len(long):]
        if o.startswith(("-D", "-U")):
            flags.append(o)
        elif o.startswith("-I"):
            incs.append(os.path.abspath(o[2:].strip()))
        i += 1
    return flags, incs


@dataclass
class Library:
    path: str
    lib: ctypes.CDLL
    kernels: dict  # name -> (index, param names, type codes, fibers)
    source_file: str


_loaded: dict[str, Library] = {}
_lock = threading.Lock()


def sanitize_mode() -> str:
    mode = os.environ.get("CUDA_EMU_SANITIZE", "").strip().lower()
    if mode in ("", "0", "none", "off"):
        return ""
    if mode != "address":
        raise ValueError(f"CUDA_EMU_SANITIZE={mode!r}: only 'address' is supported")
    with open("/proc/self/maps") as f:
        if "libasan" not in f.read():
            import sys
            raise RuntimeError(
                "CUDA_EMU_SANITIZE=address needs AddressSanitizer loaded before Python starts: run\n"
                f"  LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 "
                f"CUDA_EMU_SANITIZE=address {sys.executable} ...\n"
                "(the real interpreter, not a pyenv shim), or use cganraw.cuda_emu.run_under_asan().")
    return mode


def _pch_header(flags: list[str]) -> str:
    """A copy of cuda_emu.h beside its precompiled .gch, built once per header and flags.
    g++ falls back to the plain header whenever the .gch does not fit."""
    header = read_text(HEADER)
    key = hashlib.sha256("\0".join([header, _compiler_id(), *flags]).encode()).hexdigest()[:16]
    d = os.path.join(cache_dir(), f"pch-{key}")
    h = os.path.join(d, "cuda_emu.h")
    if os.path.isfile(h + ".gch"):
        return h
    os.makedirs(d, exist_ok=True)
    if not os.path.isfile(h):
        _atomic_write(h, header.encode())
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".gch.tmp")
    os.close(fd)
    cmd = [CXX, *flags, "-x", "c++-header", h, "-o", tmp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 0:
        os.replace(tmp, h + ".gch")
    elif os.path.exists(tmp):  # the compile below reports the header's errors
        os.unlink(tmp)
    return h


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load(source: str, filename: str, options=(), name_expressions=None) -> Library:
    """Compiles (or finds in the cache) and loads the library for one source."""
    filename = os.path.abspath(filename)
    src_dir = os.path.dirname(filename)
    dflags, incs = translate_options(options)
    asan = sanitize_mode() == "address"
    flags = BASE_FLAGS + (ASAN_FLAGS if asan else []) + DEFINES + dflags
    force = os.environ.get("EMU_FIBERS", "") not in ("", "0")
    names = tuple(name_expressions or ())
    incl = local_includes(source, src_dir, incs)
    with open(__file__, "rb") as f:
        me = f.read()
    shims = [read_text(os.path.join(SHIM_INCLUDE, n)) for n in sorted(os.listdir(SHIM_INCLUDE))]
    key_parts = [read_text(HEADER), *shims, source, filename, "\0".join(flags), "\0".join(incs), repr(names),
                 repr(force), _compiler_id(), me.decode()] + [p + "\0" + t for p, t in incl]
    key = hashlib.sha256("\0\1".join(key_parts).encode()).hexdigest()[:24]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(filename))[0])[:40]
        so = os.path.join(cache_dir(), f"{stem}-{key}{'-asan' if asan else ''}.so")
        if not os.path.isfile(so):
            _build(source, filename, src_dir, incs, flags, names, force, so)
        try:
            lib = ctypes.CDLL(so)
        except OSError:  # a damaged cache entry: build it again
            _build(source, filename, src_dir, incs, flags, names, force, so)
            lib = ctypes.CDLL(so)
        _loaded[key] = Library(so, lib, _kernel_table(lib), filename)
        return _loaded[key]


def _run(cmd: list[str], stdin: str, what: str, filename: str) -> str:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        msg = r.stderr.strip()
        if len(msg) > 12000:
            msg = msg[:12000] + "\n..."
        raise CompileError(f"cuda_emu: g++ could not {what} {filename}:\n{msg}")
    return r.stdout


def _build(source, filename, src_dir, incs, flags, names, force, so) -> None:
    rewritten, hook = rewrite_shared(source)
    text = f"#line 1 {_c_str(filename)}\n{rewritten}\n"
    inc_flags = ["-iquote", src_dir, f"-I{SHIM_INCLUDE}"] + [f"-I{d}" for d in incs]
    pp = _run([CXX, "-E", "-std=c++20", *[f for f in flags if f.startswith(("-D", "-U"))],
               *inc_flags, "-x", "c++", "-"], text, "preprocess", filename)
    kernels, sync = find_kernels(pp)
    for expr in names:
        if not any(k.name == expr for k in kernels):
            base = expr.split("<")[0].split("::")[-1]
            kernels.append(KernelDecl(expr, [], force or base in sync))
    text += trampolines(kernels, hook, force)
    # The user's -D/-U stay out of the PCH's flags: g++ checks that they do not touch
    # the header, and falls back to the plain header if they do.
    header = _pch_header([f for f in flags if not f.startswith(("-D", "-U")) or f in DEFINES])
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(so), suffix=".so.tmp")
    os.close(fd)
    try:
        _run([CXX, *flags, "-include", header, *inc_flags, "-x", "c++", "-", "-o", tmp],
             text, "compile", filename)
        os.replace(tmp, so)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _kernel_table(lib: ctypes.CDLL) -> dict:
    lib.cuda_emu_kernel_name.restype = ctypes.c_char_p
    lib.cuda_emu_kernel_params.restype = ctypes.c_char_p
    lib.cuda_emu_last_error.restype = ctypes.c_char_p
    lib.cuda_emu_launch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    table = {}
    buf = ctypes.create_string_buffer(4096)
    for i in range(lib.cuda_emu_kernel_count()):
        name = lib.cuda_emu_kernel_name(i).decode()
        lib.cuda_emu_kernel_codes(i, buf, ctypes.c_ulong(len(buf)))
        codes = [c for c in buf.value.decode().split(",") if c]
        pnames = lib.cuda_emu_kernel_params(i).decode().split(",")
        pnames = pnames if len(pnames) == len(codes) else [""] * len(codes)
        table[name] = (i, pnames, codes, bool(lib.cuda_emu_kernel_fibers(i)))
    return table
