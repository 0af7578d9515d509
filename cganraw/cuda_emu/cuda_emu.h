// cuda_emu.h: force-included (g++ -include) before an unchanged CUDA .cu file, so
// that its kernels compile as host C++ and run on the CPU under cganraw.cuda_emu.
//
// One OS thread runs a block at a time. Kernels that use barriers or warp
// operations run each CUDA thread as a fiber that switches only at
// __syncthreads and at warp operations; the others run their threads as a loop.
// Everything here has internal linkage (static) or hidden visibility, so every
// kernel .so carries its own copy of this runtime.
#pragma once

#include <assert.h>
#include <math.h>  // after <cmath>: global float overloads such as expf, abs, isnan
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static __shared__ variables become per-OS-thread (= per running block)
// storage. The loader also rewrites each declaration so that it is filled with
// 0xFF bytes (NaN) at the start of every block, as a GPU leaves it garbage.
#define __shared__ static thread_local

// ---------------------------------------------------------------- vector types
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};
#define EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T x, T y) { return N{x, y}; }
#define EMU_VEC3(T, N) static inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
#define EMU_VEC(T, P, A2, A4) EMU_VEC2(T, P##2, A2) struct P##3 { T x, y, z; }; \
    EMU_VEC3(T, P##3) EMU_VEC4(T, P##4, A4)
EMU_VEC(float, float, 8, 16)
EMU_VEC(int, int, 8, 16)
EMU_VEC(double, double, 16, 16)
EMU_VEC(char, char, 2, 4)
EMU_VEC(unsigned char, uchar, 2, 4)
EMU_VEC(short, short, 4, 8)
EMU_VEC(unsigned short, ushort, 4, 8)
EMU_VEC(long long, longlong, 16, 16)
EMU_VEC(unsigned long long, ulonglong, 16, 16)
EMU_VEC2(unsigned, uint2, 8)
EMU_VEC3(unsigned, uint3)
EMU_VEC4(unsigned, uint4, 16)
#undef EMU_VEC
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4

// ---------------------------------------------------------------- built-in variables
// Thread-local: each OS thread runs one block at a time, and the scheduler sets
// threadIdx before it resumes a fiber.
static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;
static constexpr int warpSize = 32;

// ---------------------------------------------------------------- runtime
namespace __emu {

enum State : unsigned char { READY, AT_BARRIER, AT_WARP, EXITED, ABORTED };
enum WarpOp { W_SYNC, W_IDX, W_UP, W_DOWN, W_XOR, W_BALLOT, W_ANY, W_ALL, W_MATCH_ANY,
              W_MATCH_ALL, W_RADD, W_RMIN, W_RMAX, W_RUMIN, W_RUMAX, W_RAND, W_ROR, W_RXOR };
static const char* const warp_op_name[] = {
    "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
    "__ballot_sync", "__any_sync", "__all_sync", "__match_any_sync", "__match_all_sync",
    "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_min_sync",
    "__reduce_max_sync", "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync"};
static const char* const barrier_name[] = {"__syncthreads", "__syncthreads_count",
                                           "__syncthreads_and", "__syncthreads_or"};

// ---- context switch. swapcontext() makes a sigprocmask syscall per switch (slow
// in sandboxes), so x86-64 uses a few instructions of its own; ucontext elsewhere.
#if defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
// Saves callee-saved registers, x87 control word and MXCSR on the current stack,
// stores the stack pointer in *save, and continues on the stack `to`.
extern "C" __attribute__((visibility("hidden"))) void cuda_emu_switch(void** save, void* to);
asm(R"(
    .text
    .p2align 4
    .hidden cuda_emu_switch
    .type cuda_emu_switch, @function
cuda_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    fnstcw (%rsp)
    stmxcsr 8(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    fldcw (%rsp)
    ldmxcsr 8(%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emu_switch, .-cuda_emu_switch
)");
struct Context { void* sp; };
#else
struct Context { ucontext_t uc; };
#endif

struct Fiber {
    Context ctx;
    uint3 tid;
    State state;
    const char* file;  // call site of the barrier or warp op it waits at
    int line;
    int op;            // barrier kind or WarpOp
    unsigned mask;
    int width, arg, pred, res2;
    uint64_t val, res;
    void* fake_stack;  // ASan bookkeeping
    const float* wmma_a;  // fragments a lane publishes to its warp inside wmma::mma_sync
    const float* wmma_b;
};

typedef void (*Body)(void**);

// Mirrors _LaunchCfg in cganraw/cuda_emu/_module.py.
struct LaunchCfg {
    uint32_t grid[3], block[3];
    uint64_t shared_bytes;
    uint64_t seed;
    int32_t order;    // 0 forward, 1 reverse, 2 random
    int32_t workers;  // OS threads running blocks
    int32_t strict;   // 1: a barrier released while some threads have exited is an error
    int32_t fibers;   // 1: run threads as fibers (barriers, warp ops)
};

struct Launch {
    const LaunchCfg* cfg;
    Body body;
    void** args;
    const char* kernel;
    void (*block_hook)();
    uint64_t nblocks;
    uint32_t* perm;  // random block order, or null
    std::atomic<uint64_t> next;
    std::atomic<int> failed;
    char err[8192];
};

struct Worker {
    Launch* L = nullptr;
    bool fibers = false;
    int n = 0;                   // threads in the current block
    Fiber* f = nullptr;          // fiber slots, capacity cap
    char* stacks = nullptr;      // one mmap: [guard page | stack] * cap
    size_t stack_size = 0;
    int cap = 0;
    int* ready = nullptr;        // FIFO of fibers to resume, capacity cap
    int rhead = 0, rtail = 0;
    int* tmp = nullptr;          // scratch order, capacity cap
    int cur = -1;
    int live = 0;
    Context sched;
#if !defined(EMU_ASM_SWITCH)
    ucontext_t proto;
#endif
    uint64_t rng = 0;
    uint64_t block_serial = 0;
    unsigned char* dyn = nullptr;  // dynamic shared memory of the current block
    unsigned char* dyn_region = nullptr;  // without ASan: [buffer | guard page], reused
    sigjmp_buf jb;               // back to run_block on errors outside fibers
    void* sched_fake = nullptr;
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
    char* altstack = nullptr;

    static constexpr size_t DYN_MAX = 228 * 1024;
    ~Worker() {
        if (stacks) munmap(stacks, (size_t)cap * (stack_size + page()));
        if (dyn_region) munmap(dyn_region, DYN_MAX + page());
        free(f); free(ready); free(tmp); free(altstack);
    }
    static size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }
};

static thread_local Worker* tw = nullptr;
static std::atomic<uint64_t> g_block_serial{0};
static thread_local char g_last_error[8192];

static inline uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Fills out[0..n) with 0..n-1 in the launch's thread order.
static void make_order(int* out, int n, int order, uint64_t& rng) {
    for (int i = 0; i < n; i++) out[i] = order == 1 ? n - 1 - i : i;
    if (order == 2)
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(splitmix(rng) % (uint64_t)(i + 1));
            int t = out[i]; out[i] = out[j]; out[j] = t;
        }
}

static void vset_error(Launch* L, const char* fmt, va_list ap) {
    if (L->failed.exchange(1)) return;  // the first error wins
    int k = snprintf(L->err, sizeof L->err, "kernel '%s', block (%u,%u,%u): ", L->kernel,
                     blockIdx.x, blockIdx.y, blockIdx.z);
    vsnprintf(L->err + k, sizeof L->err - k, fmt, ap);
}
static void set_error(Launch* L, const char* fmt, ...) {
    va_list ap; va_start(ap, fmt); vset_error(L, fmt, ap); va_end(ap);
}

// ---- fiber switching (ASan is told about every stack switch)
static inline void asan_start(void** fake, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake; (void)bottom; (void)size;
#endif
}
static inline void asan_finish(void* fake, const void** bottom, size_t* size) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake; (void)bottom; (void)size;
#endif
}
static inline void switch_to(Context* save, Context* to) {
#if defined(EMU_ASM_SWITCH)
    cuda_emu_switch(&save->sp, to->sp);
#else
    swapcontext(&save->uc, &to->uc);
#endif
}
static inline char* stack_of(Worker* w, int k) {
    return w->stacks + (size_t)k * (w->stack_size + Worker::page()) + Worker::page();
}

// From a fiber back to the scheduler; returns when the scheduler resumes it.
static void yield(Worker* w) {
    Fiber& f = w->f[w->cur];
    bool final = f.state == EXITED || f.state == ABORTED;
    asan_start(final ? nullptr : &f.fake_stack, w->sched_bottom, w->sched_size);
    switch_to(&f.ctx, &w->sched);
    asan_finish(f.fake_stack, nullptr, nullptr);
}

// Errors raised by kernel code (__trap, assert, misuse of a warp op): record,
// then leave the block without returning to the kernel.
[[noreturn]] static void vfail(const char* fmt, va_list ap) {
    Worker* w = tw;
    vset_error(w->L, fmt, ap);
    if (w->fibers && w->cur >= 0) {
        w->f[w->cur].state = ABORTED;
        yield(w);
    }
    siglongjmp(w->jb, 1);
}
[[noreturn]] static void fail(const char* fmt, ...) {
    va_list ap; va_start(ap, fmt); vfail(fmt, ap);
}

static void fiber_main() {
    Worker* w = tw;
    asan_finish(nullptr, &w->sched_bottom, &w->sched_size);
    w->L->body(w->L->args);
    w->f[w->cur].state = EXITED;
    yield(w);  // never resumed
    abort();
}

// A context whose first switch enters fiber_main at the top of `stack`.
static void init_context(Worker* w, Context& c, char* stack) {
#if defined(EMU_ASM_SWITCH)
    uint64_t* p = (uint64_t*)((uintptr_t)(stack + w->stack_size) & ~(uintptr_t)15);
    *--p = 0;                               // fiber_main's (never used) return address
    *--p = (uint64_t)(uintptr_t)&fiber_main;  // where cuda_emu_switch's ret goes
    for (int i = 0; i < 6; i++) *--p = 0;   // rbp rbx r12 r13 r14 r15
    p -= 2;
    uint16_t cw; uint32_t mx;
    asm volatile("fnstcw %0" : "=m"(cw));
    asm volatile("stmxcsr %0" : "=m"(mx));
    memset(p, 0, 16);
    memcpy(p, &cw, sizeof cw);
    memcpy((char*)p + 8, &mx, sizeof mx);
    c.sp = p;
#else
    c.uc = w->proto;
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = w->stack_size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fiber_main, 0);
#endif
}

static void resume(Worker* w, int k) {
    Fiber& f = w->f[k];
    threadIdx = f.tid;
    w->cur = k;
    asan_start(&w->sched_fake, stack_of(w, k), w->stack_size);
    switch_to(&w->sched, &f.ctx);
    asan_finish(w->sched_fake, nullptr, nullptr);
    w->cur = -1;
}

static void push_ready(Worker* w, int k) { w->ready[w->rtail++ % w->cap] = k; }

// Describes which threads wait where, for deadlock and divergence errors.
static int describe_waiters(Worker* w, char* out, size_t cap) {
    size_t k = 0;
    for (int i = 0; i < w->n && k + 200 < cap;) {
        Fiber& a = w->f[i];
        int j = i + 1;
        auto same = [&](const Fiber& b) {
            if (b.state != a.state) return false;
            if (a.state == EXITED) return true;
            return b.line == a.line && b.op == a.op && b.mask == a.mask && !strcmp(b.file, a.file);
        };
        while (j < w->n && same(w->f[j])) j++;
        k += snprintf(out + k, cap - k, "%sthreads %d-%d ", k ? "; " : "", i, j - 1);
        if (a.state == EXITED)
            k += snprintf(out + k, cap - k, "have exited");
        else if (a.state == AT_BARRIER)
            k += snprintf(out + k, cap - k, "wait at %s() at %s:%d", barrier_name[a.op], a.file,
                          a.line);
        else if (a.state == AT_WARP)
            k += snprintf(out + k, cap - k, "wait at %s(mask 0x%08x) at %s:%d",
                          warp_op_name[a.op], a.mask, a.file, a.line);
        else
            k += snprintf(out + k, cap - k, "are running");
        i = j;
    }
    return (int)k;
}

// Called when lane k has arrived at a warp op or exited: if every lane that the
// op waits for is there, computes all results and makes those lanes ready.
static void try_resolve_warp(Worker* w, int k) {
    Fiber* F = w->f;
    int base = k & ~31;
    int nl = w->n - base < 32 ? w->n - base : 32;
    unsigned exist = nl == 32 ? ~0u : ((1u << nl) - 1);
    Fiber& a = F[k];
    unsigned part = 0;
    for (unsigned m = a.mask & exist; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        Fiber& b = F[base + l];
        if (b.state == EXITED) continue;  // PTX: waits only for non-exited threads
        if (b.state != AT_WARP || b.op != a.op || b.mask != a.mask || b.width != a.width) return;
        part |= 1u << l;
    }
    const uint64_t POISON = ~0ull;  // read of a lane that takes no part: undefined on a GPU
    uint64_t acc = 0, ballot = 0;
    int op = a.op;
    for (unsigned m = part; m; m &= m - 1) {
        Fiber& b = F[base + __builtin_ctz(m)];
        if (b.val) ballot |= 1u << __builtin_ctz(m);
    }
    bool first = true;
    for (unsigned m = part; m; m &= m - 1) {
        uint64_t v = F[base + __builtin_ctz(m)].val;
        int64_t sv = (int32_t)(uint32_t)v;
        switch (op) {
            case W_RADD: acc = (uint32_t)(acc + v); break;
            case W_RMIN: acc = first || sv < (int64_t)(int32_t)acc ? (uint32_t)v : acc; break;
            case W_RMAX: acc = first || sv > (int64_t)(int32_t)acc ? (uint32_t)v : acc; break;
            case W_RUMIN: acc = first || (uint32_t)v < (uint32_t)acc ? (uint32_t)v : acc; break;
            case W_RUMAX: acc = first || (uint32_t)v > (uint32_t)acc ? (uint32_t)v : acc; break;
            case W_RAND: acc = first ? v : (acc & v); break;
            case W_ROR: acc |= v; break;
            case W_RXOR: acc ^= v; break;
            default: break;
        }
        first = false;
    }
    for (unsigned m = part; m; m &= m - 1) {
        int l = __builtin_ctz(m);
        Fiber& b = F[base + l];
        unsigned seg = ~(unsigned)(b.width - 1) & 31u;  // PTX segmask
        unsigned bval = (unsigned)b.arg & 31u;
        int j = l;
        bool p = false;
        switch (op) {
            case W_IDX: j = (int)((l & seg) | (bval & ~seg)); p = j <= (int)((l & seg) | (31u & ~seg)); break;
            case W_UP: j = l - (int)bval; p = j >= (int)(l & seg); break;
            case W_DOWN: j = l + (int)bval; p = j <= (int)((l & seg) | (31u & ~seg)); break;
            case W_XOR: j = l ^ (int)bval; p = j <= (int)((l & seg) | (31u & ~seg)); break;
            default: break;
        }
        switch (op) {
            case W_IDX: case W_UP: case W_DOWN: case W_XOR:
                if (!p) j = l;
                b.res = j == l ? b.val : (part >> j & 1) ? F[base + j].val : POISON;
                break;
            case W_BALLOT: b.res = ballot; break;
            case W_ANY: b.res = ballot != 0; break;
            case W_ALL: b.res = ballot == part; break;
            case W_MATCH_ANY: {
                uint64_t r = 0;
                for (unsigned q = part; q; q &= q - 1)
                    if (F[base + __builtin_ctz(q)].val == b.val) r |= 1u << __builtin_ctz(q);
                b.res = r;
                break;
            }
            case W_MATCH_ALL: {
                bool all = true;
                for (unsigned q = part; q; q &= q - 1) all &= F[base + __builtin_ctz(q)].val == b.val;
                b.res = all ? part : 0;
                b.res2 = all;
                break;
            }
            case W_SYNC: break;
            default: b.res = acc; break;
        }
    }
    // Resume the lanes in the launch's order.
    int cnt = 0;
    for (unsigned m = part; m; m &= m - 1) w->tmp[cnt++] = base + __builtin_ctz(m);
    int order = w->L->cfg->order;
    if (order == 1)
        for (int i = 0; i < cnt / 2; i++) std::swap(w->tmp[i], w->tmp[cnt - 1 - i]);
    if (order == 2)
        for (int i = cnt - 1; i > 0; i--) std::swap(w->tmp[i], w->tmp[splitmix(w->rng) % (uint64_t)(i + 1)]);
    for (int i = 0; i < cnt; i++) {
        F[w->tmp[i]].state = READY;
        push_ready(w, w->tmp[i]);
    }
}

// All live threads wait at a barrier: release them if they wait at the same
// one. Returns false (error recorded) when they wait at different barriers.
static bool release_barrier(Worker* w) {
    Fiber* F = w->f;
    const Fiber* a = nullptr;
    int count = 0;
    bool divergent = false;
    for (int i = 0; i < w->n; i++) {
        if (F[i].state != AT_BARRIER) continue;
        if (!a) a = &F[i];
        else if (F[i].line != a->line || F[i].op != a->op || strcmp(F[i].file, a->file)) divergent = true;
        count += F[i].pred != 0;
    }
    char buf[2048];
    if (divergent) {
        describe_waiters(w, buf, sizeof buf);
        set_error(w->L, "divergent barrier: %s", buf);
        return false;
    }
    if (w->L->cfg->strict && w->live < w->n) {
        describe_waiters(w, buf, sizeof buf);
        set_error(w->L, "barrier %s() at %s:%d released with exited threads (strict barrier mode): %s",
                  barrier_name[a->op], a->file, a->line, buf);
        return false;
    }
    uint64_t res = a->op == 1 ? (uint64_t)count : a->op == 2 ? count == w->live : count > 0;
    make_order(w->tmp, w->n, w->L->cfg->order, w->rng);
    for (int i = 0; i < w->n; i++) {
        Fiber& f = F[w->tmp[i]];
        if (f.state != AT_BARRIER) continue;
        f.state = READY;
        f.res = res;
        push_ready(w, w->tmp[i]);
    }
    return true;
}

// Grows the fiber slots to n; maps stacks only when the kernel runs as fibers.
static void ensure_fibers(Worker* w, int n, bool stacks) {
    if (n <= w->cap && (w->stacks || !stacks)) return;
    if (w->stacks) munmap(w->stacks, (size_t)w->cap * (w->stack_size + Worker::page()));
    w->stacks = nullptr;
    free(w->f); free(w->ready); free(w->tmp);
    if (n < w->cap) n = w->cap;
    w->cap = n;
    w->f = (Fiber*)calloc((size_t)n, sizeof(Fiber));
    w->ready = (int*)malloc(sizeof(int) * (size_t)n);
    w->tmp = (int*)malloc(sizeof(int) * (size_t)n);
    if (!stacks) return;
    const char* kb = getenv("EMU_STACK_KB");
#if defined(__SANITIZE_ADDRESS__)
    size_t def = 1024;
#else
    size_t def = 256;
#endif
    size_t sz = (kb && atoi(kb) > 0 ? (size_t)atoi(kb) : def) * 1024;
    w->stack_size = (sz + Worker::page() - 1) / Worker::page() * Worker::page();
    size_t total = (size_t)n * (w->stack_size + Worker::page());
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { fprintf(stderr, "cuda_emu: cannot map fiber stacks\n"); abort(); }
    w->stacks = (char*)p;
    for (int k = 0; k < n; k++) mprotect(stack_of(w, k) - Worker::page(), Worker::page(), PROT_NONE);
#if !defined(EMU_ASM_SWITCH)
    getcontext(&w->proto);  // copied into each fiber: saves a syscall per fiber
#endif
}

static void run_fibers(Worker* w) {
    Launch* L = w->L;
    int n = w->n;
    Fiber* F = w->f;
    w->rhead = w->rtail = 0;
    w->live = n;
    make_order(w->tmp, n, L->cfg->order, w->rng);
    for (int i = 0; i < n; i++) push_ready(w, w->tmp[i]);
    for (int k = 0; k < n; k++) {
        Fiber& f = F[k];
        f.state = READY;
        init_context(w, f.ctx, stack_of(w, k));
        f.fake_stack = nullptr;
        f.wmma_a = f.wmma_b = nullptr;
    }
    int waiting_barrier = 0;
    for (;;) {
        while (w->rhead != w->rtail) {
            int k = w->ready[w->rhead++ % w->cap];
            resume(w, k);
            Fiber& f = F[k];
            if (f.state == ABORTED) return;
            if (f.state == EXITED) {
                w->live--;
                // An exit can complete warp ops that waited for this lane.
                int base = k & ~31;
                for (int l = base; l < base + 32 && l < n; l++)
                    if (F[l].state == AT_WARP) try_resolve_warp(w, l);
            } else if (f.state == AT_WARP) {
                unsigned lane = (unsigned)(k & 31);
                if (!(f.mask >> lane & 1)) {
                    set_error(L, "%s() at %s:%d called by thread %d (lane %u) with mask 0x%08x that "
                              "does not include the calling lane", warp_op_name[f.op], f.file, f.line,
                              k, lane, f.mask);
                    return;
                }
                try_resolve_warp(w, k);
            } else if (f.state == AT_BARRIER) {
                waiting_barrier++;
            }
            if (L->failed.load(std::memory_order_relaxed)) return;
        }
        if (w->live == 0) return;
        // Nothing can run: either every live thread waits at a barrier, or deadlock.
        if (waiting_barrier == w->live) {
            if (!release_barrier(w)) return;
            waiting_barrier = 0;
            continue;
        }
        char buf[4096];
        describe_waiters(w, buf, sizeof buf);
        set_error(L, "deadlock: no thread can continue: %s", buf);
        return;
    }
}

// Per-block dynamic shared memory; read by rewritten `extern __shared__` declarations.
static inline void* dyn_smem() { return tw->dyn; }

// Fills a static __shared__ variable with 0xFF once per block (first thread to pass).
static inline void poison_once(void* p, size_t n, unsigned long long& epoch) {
    if (epoch != tw->block_serial) {
        epoch = tw->block_serial;
        memset(p, 0xFF, n);
    }
}

static struct sigaction g_old_segv, g_old_bus;
static void on_fault(int sig, siginfo_t* si, void*) {
    Worker* w = tw;
    if (!w || !w->L) {  // not ours: hand it back to the previous handler
        sigaction(SIGSEGV, &g_old_segv, nullptr);
        sigaction(SIGBUS, &g_old_bus, nullptr);
        return;
    }
    char t[64] = "";
    if (w->fibers && w->cur >= 0)
        snprintf(t, sizeof t, " in thread (%u,%u,%u)", w->f[w->cur].tid.x, w->f[w->cur].tid.y, w->f[w->cur].tid.z);
    else
        snprintf(t, sizeof t, " in thread (%u,%u,%u)", threadIdx.x, threadIdx.y, threadIdx.z);
    set_error(w->L, "%s at address %p%s (out-of-bounds access or fiber stack overflow; "
              "run with CUDA_EMU_SANITIZE=address for the line)",
              sig == SIGSEGV ? "segmentation fault" : "bus error", si->si_addr, t);
    siglongjmp(w->jb, 1);
}

// A block's dynamic shared memory, filled with 0xFF (NaN) to expose reads before
// writes. Under ASan an exact malloc (redzones on both sides); otherwise it ends at a
// guard page, so an overflow faults instead of corrupting the heap.
static void set_dyn_smem(Worker* w, size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
    free(w->dyn);
    w->dyn = (unsigned char*)malloc(bytes ? bytes : 1);
#else
    if (!w->dyn_region) {
        void* p = mmap(nullptr, Worker::DYN_MAX + Worker::page(), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) { fprintf(stderr, "cuda_emu: cannot map shared memory\n"); abort(); }
        w->dyn_region = (unsigned char*)p;
        mprotect(w->dyn_region + Worker::DYN_MAX, Worker::page(), PROT_NONE);
    }
    w->dyn = w->dyn_region + Worker::DYN_MAX - ((bytes + 15) & ~(size_t)15);
#endif
    memset(w->dyn, 0xFF, bytes);
}

static void run_block(Worker* w, uint64_t lin) {
    Launch* L = w->L;
    const LaunchCfg* c = L->cfg;
    blockIdx = uint3{(unsigned)(lin % c->grid[0]), (unsigned)(lin / c->grid[0] % c->grid[1]),
                     (unsigned)(lin / ((uint64_t)c->grid[0] * c->grid[1]))};
    w->rng = c->seed * 0x2545F4914F6CDD1Dull ^ (lin + 1) * 0x9E3779B97F4A7C15ull;
    w->block_serial = ++g_block_serial;
    set_dyn_smem(w, c->shared_bytes);
    if (L->block_hook) L->block_hook();
    int n = w->n;
    w->cur = -1;  // may be stale after a fault left a fiber
    if (sigsetjmp(w->jb, 1)) return;  // an error left the block
    if (!w->fibers) {
        make_order(w->tmp, n, c->order, w->rng);
        for (int i = 0; i < n; i++) {
            int k = w->tmp[i];
            threadIdx = uint3{(unsigned)(k % c->block[0]), (unsigned)(k / c->block[0] % c->block[1]),
                              (unsigned)(k / (c->block[0] * c->block[1]))};
            L->body(L->args);
        }
        return;
    }
    run_fibers(w);
#if defined(__SANITIZE_ADDRESS__)
    // Abandoned fibers leave poisoned frames on stacks that later blocks reuse.
    if (L->failed.load()) __asan_unpoison_memory_region(w->stacks, (size_t)w->cap * (w->stack_size + Worker::page()));
#endif
}

static void free_worker() { delete tw; tw = nullptr; }
// Keeps the caller thread's Worker (fiber stacks) between launches; frees it at thread exit.
static thread_local struct WorkerOwner { ~WorkerOwner() { free_worker(); } } g_owner;

static void* worker_main(void* arg) {
    Launch* L = (Launch*)arg;
    Worker* w = tw;
    if (!w) {
        w = tw = new Worker();
        (void)&g_owner;  // frees it when the thread ends
    }
    w->L = L;
    w->fibers = L->cfg->fibers != 0;
    const LaunchCfg* c = L->cfg;
    w->n = (int)(c->block[0] * c->block[1] * c->block[2]);
    ensure_fibers(w, w->n, w->fibers);
    for (int k = 0; k < w->n; k++)
        w->f[k].tid = uint3{(unsigned)(k % c->block[0]), (unsigned)(k / c->block[0] % c->block[1]),
                            (unsigned)(k / (c->block[0] * c->block[1]))};
    // Fault handler on an alternate stack, so that a fiber stack overflow is reported too.
#if !defined(__SANITIZE_ADDRESS__)
    if (!w->altstack) w->altstack = (char*)malloc(1 << 16);
    stack_t ss{}, old_ss{};
    ss.ss_sp = w->altstack; ss.ss_size = 1 << 16;
    sigaltstack(&ss, &old_ss);
#endif
    blockDim = dim3(c->block[0], c->block[1], c->block[2]);
    gridDim = dim3(c->grid[0], c->grid[1], c->grid[2]);
    for (;;) {
        uint64_t i = L->next.fetch_add(1);
        if (i >= L->nblocks || L->failed.load()) break;
        uint64_t lin = L->perm ? L->perm[i] : c->order == 1 ? L->nblocks - 1 - i : i;
        run_block(w, lin);
    }
#if !defined(__SANITIZE_ADDRESS__)
    sigaltstack(&old_ss, nullptr);
#endif
#if defined(__SANITIZE_ADDRESS__)
    free(w->dyn);
#endif
    w->dyn = nullptr;
    w->L = nullptr;
    return nullptr;
}

static void* helper_main(void* arg) { worker_main(arg); free_worker(); return nullptr; }

// Runs a whole grid; returns 0, or -1 with the message in last_error().
static int launch(const LaunchCfg* c, Body body, void** args, const char* kernel, void (*hook)()) {
    Launch* L = new Launch();
    L->cfg = c; L->body = body; L->args = args; L->kernel = kernel; L->block_hook = hook;
    L->nblocks = (uint64_t)c->grid[0] * c->grid[1] * c->grid[2];
    L->next = 0; L->failed = 0; L->err[0] = 0; L->perm = nullptr;
    if (c->order == 2 && L->nblocks > 1 && L->nblocks <= (1u << 24)) {
        L->perm = (uint32_t*)malloc(sizeof(uint32_t) * L->nblocks);
        uint64_t rng = c->seed ^ 0xB10C5EEDull;
        for (uint64_t i = 0; i < L->nblocks; i++) L->perm[i] = (uint32_t)i;
        for (uint64_t i = L->nblocks - 1; i > 0; i--) std::swap(L->perm[i], L->perm[splitmix(rng) % (i + 1)]);
    }
#if !defined(__SANITIZE_ADDRESS__)
    struct sigaction sa{}, old_segv{}, old_bus{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    g_old_segv = old_segv; g_old_bus = old_bus;
#endif
    int nw = c->workers > 1 ? c->workers : 1;
    if ((uint64_t)nw > L->nblocks) nw = (int)L->nblocks;
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nw && i < 64; i++)
        if (pthread_create(&th[started], nullptr, helper_main, L) == 0) started++;
    worker_main(L);
    for (int i = 0; i < started; i++) pthread_join(th[i], nullptr);
#if !defined(__SANITIZE_ADDRESS__)
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
#endif
    int rc = L->failed.load() ? -1 : 0;
    if (rc) snprintf(g_last_error, sizeof g_last_error, "%s", L->err);
    free(L->perm);
    delete L;
    return rc;
}


// ---- kernel-side entry points
static inline Worker* fiber_worker(const char* what, const char* file, int line) {
    Worker* w = tw;
    if (!w || !w->fibers || w->cur < 0)
        fail("%s() at %s:%d was reached in a kernel that the emulator runs without fibers "
             "(its source scan missed the call); set EMU_FIBERS=1 to force fibers", what, file, line);
    return w;
}

static inline int barrier(const char* file, int line, int kind, int pred) {
    Worker* w = fiber_worker(barrier_name[kind], file, line);
    Fiber& f = w->f[w->cur];
    f.state = AT_BARRIER; f.file = file; f.line = line; f.op = kind; f.pred = pred; f.mask = 0;
    yield(w);
    return (int)f.res;
}

static inline uint64_t warp_op(const char* file, int line, int op, unsigned mask, uint64_t val,
                               int arg, int width, int* pred = nullptr) {
    Worker* w = fiber_worker(warp_op_name[op], file, line);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s() at %s:%d: width %d is not a power of 2 in 1..32", warp_op_name[op], file, line, width);
    Fiber& f = w->f[w->cur];
    f.state = AT_WARP; f.file = file; f.line = line; f.op = op; f.mask = mask;
    f.val = val; f.arg = arg; f.width = width; f.res = 0; f.res2 = 0;
    yield(w);
    if (pred) *pred = f.res2;
    return f.res;
}

template <class T> static inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp op on a type wider than 8 bytes");
    uint64_t b = 0; memcpy(&b, &v, sizeof(T)); return b;
}
template <class T> static inline T from_bits(uint64_t b) { T v; memcpy(&v, &b, sizeof(T)); return v; }

template <class T> static inline T shfl(const char* file, int line, int op, unsigned mask, T v, int arg, int width) {
    return from_bits<T>(warp_op(file, line, op, mask, to_bits(v), arg, width));
}
template <class T> static inline T shfl_idx(const char* fi, int li, unsigned m, T v, int src, int width = warpSize) { return shfl(fi, li, W_IDX, m, v, src, width); }
template <class T> static inline T shfl_up(const char* fi, int li, unsigned m, T v, unsigned d, int width = warpSize) { return shfl(fi, li, W_UP, m, v, (int)d, width); }
template <class T> static inline T shfl_down(const char* fi, int li, unsigned m, T v, unsigned d, int width = warpSize) { return shfl(fi, li, W_DOWN, m, v, (int)d, width); }
template <class T> static inline T shfl_xor(const char* fi, int li, unsigned m, T v, int lm, int width = warpSize) { return shfl(fi, li, W_XOR, m, v, lm, width); }
template <class T> static inline unsigned match_any(const char* fi, int li, unsigned m, T v) { return (unsigned)warp_op(fi, li, W_MATCH_ANY, m, to_bits(v), 0, 32); }
template <class T> static inline unsigned match_all(const char* fi, int li, unsigned m, T v, int* pred) { return (unsigned)warp_op(fi, li, W_MATCH_ALL, m, to_bits(v), 0, 32, pred); }
static inline void syncwarp(const char* fi, int li, unsigned m = 0xffffffffu) { warp_op(fi, li, W_SYNC, m, 0, 0, 32); }
static inline unsigned reduce_op(const char* fi, int li, int op, unsigned m, unsigned v) { return (unsigned)warp_op(fi, li, op, m, v, 0, 32); }
static inline int reduce_op(const char* fi, int li, int op, unsigned m, int v) {
    return (int)(unsigned)warp_op(fi, li, op == W_RUMIN ? W_RMIN : op == W_RUMAX ? W_RMAX : op, m, (uint32_t)v, 0, 32);
}

// Lanes of the caller's warp that exist and have not exited (the emulator does
// not model convergence, so this is an upper bound of CUDA's answer).
static inline unsigned activemask() {
    Worker* w = tw;
    if (!w || !w->fibers || w->cur < 0) return ~0u;
    int base = w->cur & ~31;
    unsigned m = 0;
    for (int l = 0; l < 32 && base + l < w->n; l++)
        if (w->f[base + l].state != EXITED) m |= 1u << l;
    return m;
}

// ---- kernel table used by the generated trampolines
struct KernelEntry {
    const char* name;
    const char* param_names;  // comma separated, from the source
    Body body;
    void (*codes)(char*, size_t);  // comma-separated parameter type codes
    int fibers;              // 1 if the kernel (transitively) uses barriers or warp ops
};

template <class T> static constexpr const char* scalar_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, float>) return "f32";
    else if constexpr (std::is_same_v<U, double>) return "f64";
    else if constexpr (std::is_same_v<U, bool>) return "b8";
    else if constexpr (std::is_integral_v<U>) {
        constexpr bool s = std::is_signed_v<U>;
        switch (sizeof(U)) {
            case 1: return s ? "i8" : "u8";
            case 2: return s ? "i16" : "u16";
            case 4: return s ? "i32" : "u32";
            default: return s ? "i64" : "u64";
        }
    } else if constexpr (std::is_void_v<U>) return "void";
    else return nullptr;
}
template <class T> static void put_code(char*& p, char* end) {
    using U = std::remove_cv_t<std::remove_reference_t<T>>;
    if constexpr (std::is_pointer_v<U>) {
        using E = std::remove_cv_t<std::remove_pointer_t<U>>;
        if constexpr (scalar_code<E>() != nullptr) p += snprintf(p, end - p, "*%s,", scalar_code<E>());
        else if constexpr (std::is_pointer_v<E>) p += snprintf(p, end - p, "*u64,");
        else p += snprintf(p, end - p, "*s%zu,", sizeof(E));
    } else if constexpr (scalar_code<U>() != nullptr) {
        p += snprintf(p, end - p, "%s,", scalar_code<U>());
    } else {
        p += snprintf(p, end - p, "s%zu,", sizeof(U));
    }
}

template <class F> struct Sig;
template <class... P> struct Sig<void(P...)> {
    template <void (*K)(P...), size_t... I> static void call(void** a, std::index_sequence<I...>) {
        K(*static_cast<std::remove_cv_t<P>*>(a[I])...);  // each thread gets its own copies, like CUDA
    }
    template <void (*K)(P...)> static void body(void** a) { call<K>(a, std::index_sequence_for<P...>{}); }
    static void codes(char* buf, size_t n) {
        char* p = buf; char* end = buf + n;
        *p = 0;
        (put_code<P>(p, end), ...);
        if (p > buf) p[-1] = 0;
    }
};

}  // namespace __emu

// ---------------------------------------------------------------- barriers and warp operations
#define __syncthreads() ::__emu::barrier(__FILE__, __LINE__, 0, 1)
#define __syncthreads_count(p) ::__emu::barrier(__FILE__, __LINE__, 1, (p) != 0)
#define __syncthreads_and(p) ::__emu::barrier(__FILE__, __LINE__, 2, (p) != 0)
#define __syncthreads_or(p) ::__emu::barrier(__FILE__, __LINE__, 3, (p) != 0)
#define __syncwarp(...) ::__emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_sync(...) ::__emu::shfl_idx(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::__emu::shfl_up(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::__emu::shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::__emu::shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(m, p) ((unsigned)::__emu::warp_op(__FILE__, __LINE__, ::__emu::W_BALLOT, (m), (p) != 0, 0, 32))
#define __any_sync(m, p) ((int)::__emu::warp_op(__FILE__, __LINE__, ::__emu::W_ANY, (m), (p) != 0, 0, 32))
#define __all_sync(m, p) ((int)::__emu::warp_op(__FILE__, __LINE__, ::__emu::W_ALL, (m), (p) != 0, 0, 32))
#define __match_any_sync(m, v) ::__emu::match_any(__FILE__, __LINE__, (m), (v))
#define __match_all_sync(m, v, pred) ::__emu::match_all(__FILE__, __LINE__, (m), (v), (pred))
#define __reduce_add_sync(m, v) ::__emu::reduce_op(__FILE__, __LINE__, ::__emu::W_RADD, (m), (v))
#define __reduce_min_sync(m, v) ::__emu::reduce_op(__FILE__, __LINE__, ::__emu::W_RUMIN, (m), (v))
#define __reduce_max_sync(m, v) ::__emu::reduce_op(__FILE__, __LINE__, ::__emu::W_RUMAX, (m), (v))
#define __reduce_and_sync(m, v) ::__emu::reduce_op(__FILE__, __LINE__, ::__emu::W_RAND, (m), (unsigned)(v))
#define __reduce_or_sync(m, v) ::__emu::reduce_op(__FILE__, __LINE__, ::__emu::W_ROR, (m), (unsigned)(v))
#define __reduce_xor_sync(m, v) ::__emu::reduce_op(__FILE__, __LINE__, ::__emu::W_RXOR, (m), (unsigned)(v))
static inline unsigned __activemask() { return ::__emu::activemask(); }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __nanosleep(unsigned) {}
[[noreturn]] static inline void __trap() {
    ::__emu::fail("__trap() called by thread (%u,%u,%u)", threadIdx.x, threadIdx.y, threadIdx.z);
}
#define __brkpt() __trap()

// assert() in a kernel: a Python exception, not abort(). Hidden visibility binds
// this .so's own calls to this definition.
extern "C" [[noreturn]] void __assert_fail(const char* expr, const char* file, unsigned int line,
                                           const char* func) noexcept {
    ::__emu::fail("assertion '%s' failed in %s at %s:%u, thread (%u,%u,%u)", expr, func, file, line,
                  threadIdx.x, threadIdx.y, threadIdx.z);
}

// ---------------------------------------------------------------- atomics (on 2 worker threads they are real)
template <class T> using __emu_ar = std::atomic_ref<T>;
#define EMU_MO std::memory_order_relaxed
template <class T> static inline T atomicAdd(T* p, std::type_identity_t<T> v) { return __emu_ar<T>(*p).fetch_add(v, EMU_MO); }
template <class T> static inline T atomicSub(T* p, std::type_identity_t<T> v) { return __emu_ar<T>(*p).fetch_sub(v, EMU_MO); }
template <class T> static inline T atomicExch(T* p, std::type_identity_t<T> v) { return __emu_ar<T>(*p).exchange(v, EMU_MO); }
template <class T> static inline T atomicAnd(T* p, std::type_identity_t<T> v) { return __emu_ar<T>(*p).fetch_and(v, EMU_MO); }
template <class T> static inline T atomicOr(T* p, std::type_identity_t<T> v) { return __emu_ar<T>(*p).fetch_or(v, EMU_MO); }
template <class T> static inline T atomicXor(T* p, std::type_identity_t<T> v) { return __emu_ar<T>(*p).fetch_xor(v, EMU_MO); }
template <class T> static inline T atomicCAS(T* p, std::type_identity_t<T> cmp, std::type_identity_t<T> v) {
    __emu_ar<T>(*p).compare_exchange_strong(cmp, v, EMU_MO);
    return cmp;  // the old value either way
}
template <class T, class F> static inline T __emu_atomic_update(T* p, F f) {
    __emu_ar<T> r(*p);
    T old = r.load(EMU_MO);
    while (!r.compare_exchange_weak(old, f(old), EMU_MO)) {}
    return old;
}
template <class T> static inline T atomicMax(T* p, std::type_identity_t<T> v) {
    static_assert(std::is_integral_v<T>, "CUDA has atomicMax for integers only");
    return __emu_atomic_update(p, [v](T o) { return o < v ? v : o; });
}
template <class T> static inline T atomicMin(T* p, std::type_identity_t<T> v) {
    static_assert(std::is_integral_v<T>, "CUDA has atomicMin for integers only");
    return __emu_atomic_update(p, [v](T o) { return o > v ? v : o; });
}
static inline unsigned atomicInc(unsigned* p, unsigned v) {
    return __emu_atomic_update(p, [v](unsigned o) { return o >= v ? 0u : o + 1; });
}
static inline unsigned atomicDec(unsigned* p, unsigned v) {
    return __emu_atomic_update(p, [v](unsigned o) { return (o == 0 || o > v) ? v : o - 1; });
}
#undef EMU_MO
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicMax_block atomicMax
#define atomicMin_block atomicMin
#define atomicCAS_block atomicCAS
#define atomicExch_block atomicExch

// ---------------------------------------------------------------- math
// CUDA's fast intrinsics are approximations on a GPU; here they are exact libm calls.
// glibc already declares __expf & co. as extern aliases of expf & co.
#define __expf expf
#define __exp10f exp10f
#define __logf logf
#define __log2f log2f
#define __log10f log10f
#define __sinf sinf
#define __cosf cosf
#define __tanf tanf
#define __sincosf sincosf
#define __powf powf
static inline float __fdividef(float x, float y) { return x / y; }
static inline float fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fdiv_rn(float x, float y) { return x / y; }
static inline float __fadd_rn(float x, float y) { return x + y; }
static inline float __fsub_rn(float x, float y) { return x - y; }
static inline float __fmul_rn(float x, float y) { return x * y; }
static inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static inline double __dadd_rn(double x, double y) { return x + y; }
static inline double __dmul_rn(double x, double y) { return x * y; }
static inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
static inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
static inline unsigned __float2uint_rz(float x) { return (unsigned)x; }
static inline long long __float2ll_rn(float x) { return (long long)nearbyintf(x); }
static inline long long __float2ll_rz(float x) { return (long long)x; }
static inline int __double2int_rn(double x) { return (int)nearbyint(x); }
static inline float __double2float_rn(double x) { return (float)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline double __int2double_rn(int x) { return (double)x; }
static inline int __float_as_int(float x) { int r; memcpy(&r, &x, 4); return r; }
static inline unsigned __float_as_uint(float x) { unsigned r; memcpy(&r, &x, 4); return r; }
static inline float __int_as_float(int x) { float r; memcpy(&r, &x, 4); return r; }
static inline float __uint_as_float(unsigned x) { float r; memcpy(&r, &x, 4); return r; }
static inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, 8); return r; }
static inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, 8); return r; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(x);
}
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline int __mul24(int a, int b) { return (int)((unsigned)(a << 8) >> 8) * (int)((unsigned)(b << 8) >> 8); }
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
static inline long long clock64() {
    timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000ll + t.tv_nsec;
}

// min/max: CUDA's overload set (floats go through fminf/fmaxf: a NaN loses).
#define EMU_MINMAX(A, B, R) \
    static inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    static inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
EMU_MINMAX(int, int, int)
EMU_MINMAX(unsigned, unsigned, unsigned)
EMU_MINMAX(int, unsigned, unsigned)
EMU_MINMAX(unsigned, int, unsigned)
EMU_MINMAX(long, long, long)
EMU_MINMAX(unsigned long, unsigned long, unsigned long)
EMU_MINMAX(long long, long long, long long)
EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EMU_MINMAX(long long, unsigned long long, unsigned long long)
EMU_MINMAX(unsigned long long, long long, unsigned long long)
#undef EMU_MINMAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin(a, b); }
static inline double max(float a, double b) { return fmax(a, b); }
static inline double min(double a, float b) { return fmin(a, b); }
static inline double max(double a, float b) { return fmax(a, b); }

// ---------------------------------------------------------------- WMMA (nvcuda::wmma of <mma.h>)
// Tensor-core fragments for TF32 inputs with FP32 accumulation, shape m16n16k8 (sm_80+).
// `#include <mma.h>` finds an empty stand-in in cuda_emu/include, so a .cu file compiles
// unchanged. A fragment is opaque on a GPU; here lane l holds the elements e*32 + l
// (e < num_elements) of the logical tile in row-major order (a: 16x8 m x k, b: 8x16
// k x n, accumulator: 16x16 m x n), so elementwise work on frag.x[] (the TF32
// conversion, a scale) is per lane, as CUDA allows, and only mma_sync talks across lanes.
//   load_matrix_sync / store_matrix_sync  per lane; the pointer must be 256-bit aligned
//                                         and ldm a multiple of 4 floats (16 bytes), as
//                                         on a GPU (violations are KernelErrors here)
//   mma_sync                              warp-collective: all 32 lanes publish their a
//                                         and b fragments, meet (as __syncwarp), each
//                                         computes its own d elements, and meet again.
//                                         A partial warp, an exited lane or lanes at
//                                         different mma_sync calls are KernelErrors.
// TF32: __float_to_tf32 rounds to nearest, ties away from zero (cvt.rna.tf32.f32), to a
// 10-bit mantissa; mma_sync reads its inputs as TF32 by dropping the 13 low mantissa
// bits, as the tensor cores do with unconverted values. Products of TF32 values are
// exact in FP32; they are added to c in k order with FP32 rounding (a GPU's order is
// unspecified: compare with tolerances).
namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };

static inline float __float_to_tf32(float v) {
    uint32_t b = ::__emu::from_bits<uint32_t>(::__emu::to_bits(v));
    if ((b & 0x7f800000u) != 0x7f800000u) {  // finite: round the 13 dropped bits, ties away
        b += 0x1000u;                         // may carry into the exponent (up to inf): as PTX
        b &= 0xffffe000u;
    }
    return ::__emu::from_bits<float>(b);
}

namespace __detail {
template <class Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };
template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

static inline int lane() {
    unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return (int)(linear & 31u);
}
static inline float tf32_bits(float v) {  // what a tensor core reads of an FP32 register
    uint32_t b = ::__emu::from_bits<uint32_t>(::__emu::to_bits(v));
    if ((b & 0x7f800000u) != 0x7f800000u) b &= 0xffffe000u;
    return ::__emu::from_bits<float>(b);
}
static inline void check_ptr(const char* what, const void* p, unsigned ldm, const char* file, int line) {
    if (reinterpret_cast<uintptr_t>(p) & 31u)
        ::__emu::fail("nvcuda::wmma::%s at %s:%d: pointer %p is not 256-bit (32-byte) aligned", what, file, line, p);
    if (ldm % 4u)
        ::__emu::fail("nvcuda::wmma::%s at %s:%d: ldm %u is not a multiple of 4 floats (16 bytes)", what, file,
                      line, ldm);
}
template <class Layout> struct is_col : std::false_type {};
template <> struct is_col<col_major> : std::true_type {};
}  // namespace __detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
    static_assert(M == 16 && N == 16 && K == 8,
                  "cuda_emu: WMMA is emulated for the TF32 shape m16n16k8 only");
    static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> : std::is_same_v<T, precision::tf32>,
                  "cuda_emu: WMMA is emulated for tf32 a/b fragments and float accumulators only");
    static_assert(std::is_same_v<Use, accumulator> == std::is_void_v<Layout>,
                  "a/b fragments take row_major or col_major; accumulators take no layout");
    using S = __detail::shape<Use, M, N, K>;

public:
    using element_type = typename __detail::storage<T>::type;
    using storage_element_type = element_type;
    static constexpr int num_elements = S::rows * S::cols / 32;
    static constexpr int rows = S::rows, cols = S::cols;
    element_type x[num_elements];
};

template <class Use, int M, int N, int K, class T, class Layout>
static inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, typename fragment<Use, M, N, K, T, Layout>::element_type v) {
    for (int e = 0; e < f.num_elements; e++) f.x[e] = v;
}

// a or b fragment, layout from its type: row_major (r, c) at p[r*ldm + c], col_major at p[c*ldm + r]
template <class Use, int M, int N, int K, class T, class Layout>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const float* p, unsigned ldm,
                                    const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(!std::is_void_v<Layout>, "an accumulator load takes a layout_t argument");
    __detail::check_ptr("load_matrix_sync", p, ldm, file, line);
    const int l = __detail::lane();
    for (int e = 0; e < f.num_elements; e++) {
        int idx = e * 32 + l, r = idx / f.cols, c = idx % f.cols;
        f.x[e] = __detail::is_col<Layout>::value ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}

template <int M, int N, int K>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm,
                                    layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    __detail::check_ptr("load_matrix_sync", p, ldm, file, line);
    const int l = __detail::lane();
    for (int e = 0; e < f.num_elements; e++) {
        int idx = e * 32 + l, r = idx / f.cols, c = idx % f.cols;
        f.x[e] = layout == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}

template <int M, int N, int K>
static inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                                     layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    __detail::check_ptr("store_matrix_sync", p, ldm, file, line);
    const int l = __detail::lane();
    for (int e = 0; e < f.num_elements; e++) {
        int idx = e * 32 + l, r = idx / f.cols, c = idx % f.cols;
        (layout == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.x[e];
    }
}

// d = a b + c over the warp (d may be c)
template <class LA, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                            const fragment<matrix_a, 16, 16, 8, precision::tf32, LA>& a,
                            const fragment<matrix_b, 16, 16, 8, precision::tf32, LB>& b,
                            const fragment<accumulator, 16, 16, 8, float>& c,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace ::__emu;
    Worker* w = fiber_worker("nvcuda::wmma::mma_sync", file, line);
    const int me = w->cur, base = me & ~31, lane = me & 31;
    w->f[me].wmma_a = a.x;
    w->f[me].wmma_b = b.x;
    syncwarp(file, line);  // every lane has published its fragments
    float A[16][8], B[8][16];
    for (int l = 0; l < 32; l++) {
        const int k = base + l;
        if (k >= w->n)
            fail("nvcuda::wmma::mma_sync at %s:%d: the warp of thread %d has only %d threads; WMMA needs all 32 lanes",
                 file, line, me, w->n - base);
        const Fiber& o = w->f[k];
        if (o.state == EXITED || !o.wmma_a)
            fail("nvcuda::wmma::mma_sync at %s:%d: lane %d of the warp of thread %d %s; WMMA needs all 32 lanes",
                 file, line, l, me, o.state == EXITED ? "has exited" : "did not call it");
        if (o.line != line || strcmp(o.file, file))
            fail("nvcuda::wmma::mma_sync at %s:%d: lane %d of the warp of thread %d waits at %s:%d instead (divergent WMMA)",
                 file, line, l, me, o.file, o.line);
        for (int e = 0; e < 4; e++) {
            int idx = e * 32 + l;
            A[idx / 8][idx % 8] = __detail::tf32_bits(o.wmma_a[e]);
            B[idx / 16][idx % 16] = __detail::tf32_bits(o.wmma_b[e]);
        }
    }
    float out[8];
    for (int e = 0; e < 8; e++) {
        int idx = e * 32 + lane, r = idx / 16, col = idx % 16;
        float s = c.x[e];
        for (int k = 0; k < 8; k++) s += A[r][k] * B[k][col];
        out[e] = s;
    }
    syncwarp(file, line);  // every lane has read the others' fragments
    w->f[me].wmma_a = w->f[me].wmma_b = nullptr;
    for (int e = 0; e < 8; e++) d.x[e] = out[e];
}

}  // namespace wmma
}  // namespace nvcuda
