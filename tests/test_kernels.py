"""Tests of the CUDA kernels in ``kernels/`` (importable as ``seals_gpu.kernels``).

Three layers, so that a machine without a GPU still exercises the kernel code:

1. compile checks: every ``.cu`` through ``nvcc -arch=sm_90 -cubin -Xptxas -v`` (syntax, registers,
   spills, shared memory); skipped without nvcc;
2. CPU emulation: the unchanged kernel sources compiled with g++ against a small SIMT emulator (each CUDA
   thread a ucontext fiber; ``__syncthreads`` and warp collectives switch fibers) and driven through the
   real Python launchers via their ``launch=`` hook; compared with the torch references, exactly where
   the scores are identical; skipped without g++;
3. GPU runs (``@pytest.mark.gpu``): the same comparisons on a CUDA device through CuPy.

Plus the PQ references (torch vs float64 reconstruction vs FAISS decoding), which run anywhere.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from seals_gpu.kernels import reference

from seals_gpu import kernels, scoring
from seals_gpu.errors import ConfigError

HAS_GPU_KERNELS = torch.cuda.is_available() and kernels.available()[0]
needs_gpu = pytest.mark.skipif(
    not HAS_GPU_KERNELS, reason="needs a CUDA GPU and CuPy (" + kernels.available()[1] + ")"
)
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
CXX = shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(
    CXX is None or not sys.platform.startswith("linux"), reason="the CPU emulation needs g++ on Linux"
)


# ------------------------------------------------------------------------------------------------ helpers
def make_batch(
    seed: int,
    lens: list[int],
    *,
    N: int = 300,
    d: int = 32,
    kinds: list[int] | None = None,
    dtype: torch.dtype = torch.float32,
    dup_rows: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """A random CSR batch; with ``dup_rows`` some candidates repeat rows (equal scores, distinct ids)."""
    g = torch.Generator().manual_seed(seed)
    U = len(lens)
    emb = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=1)
    if dup_rows:
        emb[N // 2 :] = emb[: N - N // 2]  # every row of the second half duplicates one of the first
    off = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int64)
    M = int(off[-1])
    rows = torch.randint(0, N, (M,), generator=g)
    ids = torch.randperm(max(4 * M, 10), generator=g)[:M] + 1000
    kinds = kinds if kinds is not None else [i % 3 for i in range(U)]
    return dict(
        emb=emb.to(device=device, dtype=dtype),
        rows=rows.to(device),
        ids=ids.to(device),
        offsets=off.to(device),
        W=(2.0 * torch.randn(U, d, generator=g)).to(device),
        bias=(0.3 * torch.randn(U, generator=g)).to(device),
        kind=torch.tensor(kinds, dtype=torch.int8, device=device),
        ref=torch.nn.functional.normalize(torch.randn(U, d, generator=g), dim=1).to(device),
        beta=1.5,
    )


def unit_args(bt: dict[str, Any]) -> tuple:
    return bt["W"], bt["bias"], bt["kind"], bt["ref"], bt["beta"]


def assert_topb_equal(got: tuple[torch.Tensor, torch.Tensor, torch.Tensor], ref: scoring.TopB) -> None:
    ids, sc, counts = (t.cpu() for t in got)
    assert torch.equal(counts, ref.counts.cpu())
    assert torch.equal(ids, ref.ids.cpu()), f"\n{ids}\n!=\n{ref.ids}"
    assert torch.equal(sc, ref.scores.cpu().to(sc.dtype))


def assert_topb_close(
    got: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bt: dict[str, Any],
    b: int,
    true_scores: torch.Tensor,
    atol: float,
) -> None:
    """``got`` is a valid top-b under rounding: the right counts, ids from each segment, scores close to the
    float64 truth, and a chosen set whose true scores match the best possible ones within ``atol``."""
    ids, sc, counts = (t.cpu() for t in got)
    off = bt["offsets"].cpu().numpy()
    all_ids = bt["ids"].cpu().numpy()
    ts = true_scores.cpu().double().numpy()
    for u in range(off.size - 1):
        seg_ids, seg_sc = all_ids[off[u] : off[u + 1]], ts[off[u] : off[u + 1]]
        c = min(b, seg_ids.size)
        assert int(counts[u]) == c
        gi = ids[u, :c].numpy()
        assert (ids[u, c:] == -1).all() and torch.isinf(sc[u, c:]).all()
        assert np.unique(gi).size == c
        lookup = dict(zip(seg_ids.tolist(), seg_sc.tolist(), strict=True))
        truth_of_got = np.array([lookup[int(i)] for i in gi])
        np.testing.assert_allclose(sc[u, :c].double().numpy(), truth_of_got, atol=atol, rtol=0)
        best = np.sort(seg_sc)[::-1][:c]
        np.testing.assert_allclose(np.sort(truth_of_got)[::-1], best, atol=atol, rtol=0)
        s = sc[u, :c].numpy()
        assert (np.diff(s) <= 0).all()
        tie = np.diff(s) == 0
        assert (np.diff(gi)[tie] > 0).all(), "equal scores must come in ascending id order"


# ------------------------------------------------------------------------------------ 1. compile checks
def _ptxas_report(stderr: str) -> dict[str, dict[str, int]]:
    """{entry: {registers, spill_stores, spill_loads, smem}} from ``-Xptxas -v`` output."""
    out: dict[str, dict[str, int]] = {}
    cur = None
    for line in stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            out[cur] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[cur]["spill_stores"], out[cur]["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[cur]["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            out[cur]["smem"] = int(s.group(1)) if s else 0
    return out


@needs_nvcc
@pytest.mark.parametrize("name", sorted(kernels.SOURCES))
def test_nvcc_compiles_for_sm90(name: str, tmp_path: Path) -> None:
    src = kernels.KERNEL_DIR / kernels.SOURCES[name]
    cmd = ["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / f"{name}.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = _ptxas_report(r.stderr)
    assert set(rep) == set(kernels.KERNELS[name]), f"entry points {sorted(rep)} != {kernels.KERNELS[name]}"
    for entry, info in rep.items():
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, f"{entry} spills: {info}"
        assert info["registers"] <= 128, f"{entry} uses {info['registers']} registers"
        assert info["smem"] <= 48 * 1024, f"{entry} static smem {info['smem']}"
    print(name, rep)


def test_kernel_sources_document_their_launch() -> None:
    for name in kernels.SOURCES:
        head = kernels.source(name)[:3000]
        assert head.startswith("//") and "grid" in head and "block" in head and "(M," in head, name


def test_launch_constants_match_sources() -> None:
    src = kernels.source("score_select")
    for const in ("SCORE_THREADS", "SCORE_ROWS", "SEL_THREADS", "MAX_B"):
        m = re.search(rf"#define {const} (\d+)", src)
        assert m and int(m.group(1)) == getattr(kernels, const), const
    m = re.search(r"#define PQ_THREADS (\d+)", kernels.source("pq_score"))
    assert m and int(m.group(1)) == kernels.PQ_THREADS


def test_kernels_import_and_report_without_gpu() -> None:
    ok, reason = kernels.available()
    assert isinstance(ok, bool) and reason
    if not torch.cuda.is_available():
        assert not ok
        with pytest.raises(ConfigError):
            kernels.score_select_cuda(*_cpu_args(), 3)


def test_resolve_device() -> None:
    from seals_gpu.device import DeviceChoice, resolve_device

    cpu = resolve_device("cpu")
    assert cpu.kind == "cpu" and cpu.torch_device == torch.device("cpu") and not cpu.has_cupy
    with pytest.raises(ConfigError, match="valid names: auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    auto = resolve_device()
    assert isinstance(auto, DeviceChoice)
    with pytest.raises(AttributeError):
        auto.kind = "cpu"  # type: ignore[misc]  # frozen
    if torch.cuda.is_available():
        assert auto.kind == "cuda" and auto.reason.startswith("cuda: ")
        assert resolve_device("CUDA:0").torch_device == torch.device("cuda", 0)
        with pytest.raises(ConfigError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert auto.kind == "cpu" and auto.reason == "cpu: torch.cuda.is_available() is False"
        assert not auto.faiss_gpu
        with pytest.raises(ConfigError, match="install a CUDA build of torch"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="torch.cuda.is_available"):
            resolve_device("cuda:1")


def _cpu_args() -> tuple:
    bt = make_batch(0, [3, 2])
    return (bt["emb"], bt["rows"], bt["ids"], bt["offsets"], *unit_args(bt))


def test_plan_topb_level() -> None:
    off = np.array([0, 0, 5, 105, 110], dtype=np.int64)
    assert kernels.plan_topb_level(off, 3, 200) is None
    lo, hi, out, new_off = kernels.plan_topb_level(off, 3, 40)
    # unit 1 (5 items): one chunk; unit 2 (100 items): 3 chunks; unit 3: one chunk
    assert lo.tolist() == [0, 5, 45, 85, 105]
    assert hi.tolist() == [5, 45, 85, 105, 110]
    assert out.tolist() == [0, 3, 6, 9, 12]
    assert new_off.tolist() == [0, 0, 3, 12, 15]


# ------------------------------------------------------------------------------------- 2. CPU emulation
EMU_HEADER = r"""
// Minimal SIMT emulator: runs CUDA kernels on the CPU one block at a time, each thread a ucontext fiber.
#include <ucontext.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct emu_dim3 { unsigned int x, y, z; };

namespace emu {
struct Fiber { ucontext_t ctx; std::vector<char> stack; bool done; unsigned tid; };
struct State {
    ucontext_t sched;
    std::vector<Fiber> fibers;
    int cur = -1;
    emu_dim3 grid{1, 1, 1}, block{1, 1, 1}, bidx{0, 0, 0};
    std::vector<float4> smem;
    std::function<void()> body;
    unsigned long long bar_gen = 0, progress = 0;
    int bar_arrived = 0, live = 0;
    std::vector<unsigned long long> wgen;
    std::vector<int> warrived, wlive;
    std::vector<std::vector<uint64_t>> wslot;
};
static State S;
static void fail(const char* msg) { std::fprintf(stderr, "emu: %s\n", msg); std::abort(); }
inline void yield() { swapcontext(&S.fibers[S.cur].ctx, &S.sched); }
inline void block_sync() {
    const unsigned long long g = S.bar_gen;
    ++S.progress;
    if (++S.bar_arrived == S.live) { S.bar_arrived = 0; ++S.bar_gen; return; }
    while (S.bar_gen == g) yield();
}
inline void warp_sync() {
    const int w = S.fibers[S.cur].tid / 32;
    const unsigned long long g = S.wgen[w];
    ++S.progress;
    if (++S.warrived[w] == S.wlive[w]) { S.warrived[w] = 0; ++S.wgen[w]; return; }
    while (S.wgen[w] == g) yield();
}
inline unsigned lane_id() { return S.fibers[S.cur].tid & 31u; }
inline int warp_id() { return (int)(S.fibers[S.cur].tid / 32); }
template <typename T> inline uint64_t bits(T v) { uint64_t b = 0; std::memcpy(&b, &v, sizeof(T)); return b; }
template <typename T> inline T unbits(uint64_t b) { T v; std::memcpy(&v, &b, sizeof(T)); return v; }
template <typename T, typename F> inline T exchange(T v, F src) {  // publish v, read lane src(lane)
    const int w = warp_id();
    if (S.wlive[w] != 32) fail("warp collective with fewer than 32 live lanes");
    S.wslot[w][lane_id()] = bits(v);
    warp_sync();
    const T r = unbits<T>(S.wslot[w][src((int)lane_id())]);
    warp_sync();
    return r;
}
static void entry() {
    S.body();
    Fiber& f = S.fibers[S.cur];
    const int w = (int)(f.tid / 32);
    f.done = true; --S.live; --S.wlive[w]; ++S.progress;
    if (S.bar_arrived > 0 && S.bar_arrived == S.live) { S.bar_arrived = 0; ++S.bar_gen; }
    if (S.warrived[w] > 0 && S.warrived[w] == S.wlive[w]) { S.warrived[w] = 0; ++S.wgen[w]; }
}
static void run_block(unsigned nthreads) {
    const size_t STACK = 1 << 16;
    if (S.fibers.size() < nthreads) S.fibers.resize(nthreads);
    const unsigned nw = (nthreads + 31) / 32;
    S.live = (int)nthreads; S.bar_arrived = 0;
    S.wgen.assign(nw, 0); S.warrived.assign(nw, 0); S.wlive.assign(nw, 0);
    S.wslot.assign(nw, std::vector<uint64_t>(32, 0));
    for (unsigned t = 0; t < nthreads; ++t) {
        Fiber& f = S.fibers[t];
        if (f.stack.size() < STACK) f.stack.resize(STACK);
        f.done = false; f.tid = t; ++S.wlive[t / 32];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data(); f.ctx.uc_stack.ss_size = f.stack.size(); f.ctx.uc_link = &S.sched;
        makecontext(&f.ctx, entry, 0);
    }
    int remaining = (int)nthreads;
    while (remaining > 0) {
        const unsigned long long before = S.progress;
        remaining = 0;
        for (unsigned t = 0; t < nthreads; ++t) {
            if (S.fibers[t].done) continue;
            S.cur = (int)t;
            swapcontext(&S.sched, &S.fibers[t].ctx);
            if (!S.fibers[t].done) ++remaining;
        }
        if (remaining > 0 && S.progress == before) fail("deadlock: every live thread waits at a barrier");
    }
    S.cur = -1;
}
static void launch(emu_dim3 grid, emu_dim3 block, size_t smem, std::function<void()> body) {
    S.grid = grid; S.block = block;
    S.smem.assign(smem / sizeof(float4) + 1, float4{NAN, NAN, NAN, NAN});  // garbage, like real smem
    S.body = std::move(body);
    for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) { S.bidx = emu_dim3{x, y, 0}; run_block(block.x); }
}
}  // namespace emu

#define __global__
#define __shared__ static
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define threadIdx (emu_dim3{emu::S.fibers[emu::S.cur].tid, 0u, 0u})
#define blockIdx (emu::S.bidx)
#define blockDim (emu::S.block)
#define gridDim (emu::S.grid)
inline void* emu_dyn_smem() { return emu::S.smem.data(); }
inline float emu_half_to_float(unsigned short h) {
    const unsigned sign = (h >> 15) & 1u, ex = (h >> 10) & 31u, man = h & 1023u;
    float v;
    if (ex == 0) v = std::ldexp((float)man, -24);
    else if (ex == 31) v = man ? NAN : INFINITY;
    else v = std::ldexp((float)(man | 1024u), (int)ex - 25);
    return sign ? -v : v;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(int i) { return emu::unbits<float>((uint32_t)i); }
inline float __uint_as_float(unsigned u) { return emu::unbits<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)emu::bits(f); }
inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { const unsigned o = *p; *p = o + v; return o; }
inline void __syncthreads() { emu::block_sync(); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int m) {
    return emu::exchange(v, [m](int l) { return l ^ m; });
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, int dl) {
    return emu::exchange(v, [dl](int l) { return l >= dl ? l - dl : l; });
}
template <typename T> inline T __shfl_sync(unsigned, T v, int s) { return emu::exchange(v, [s](int) { return s; }); }
inline unsigned __ballot_sync(unsigned, bool p) {
    const int w = emu::warp_id();
    emu::S.wslot[w][emu::lane_id()] = p ? 1u : 0u;
    emu::warp_sync();
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (emu::S.wslot[w][l] ? 1u : 0u) << l;
    emu::warp_sync();
    return r;
}
inline unsigned __match_any_sync(unsigned, unsigned v) {
    const int w = emu::warp_id();
    emu::S.wslot[w][emu::lane_id()] = v;
    emu::warp_sync();
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (emu::S.wslot[w][l] == v ? 1u : 0u) << l;
    emu::warp_sync();
    return r;
}
template <typename... A, size_t... I>
inline void emu_invoke(void (*f)(A...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(a[I])...);
}
template <typename... A> inline std::function<void(void**)> emu_thunk(void (*f)(A...)) {
    return [f](void** a) { emu_invoke(f, a, std::index_sequence_for<A...>{}); };
}
"""


def _emulated_source(name: str) -> str:
    src = kernels.source(name)
    src = re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* \2 = (\1*)emu_dyn_smem();", src)
    src = re.sub(
        r'asm\("cvt\.f32\.f16 %0, %1;" : "=f"\((\w+)\) : "h"\((\w+)\)\);', r"\1 = emu_half_to_float(\2);", src
    )
    assert "asm(" not in src and "extern __shared__" not in src
    reg = ", ".join(f'{{"{k}", emu_thunk({k})}}' for k in kernels.KERNELS[name])
    return (
        EMU_HEADER
        + src
        + f"""
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, unsigned long smem, void** args) {{
    static std::map<std::string, std::function<void(void**)>> reg = {{ {reg} }};
    auto it = reg.find(name);
    if (it == reg.end()) return 1;
    auto fn = it->second;
    emu::launch(emu_dim3{{gx, gy, 1}}, emu_dim3{{bx, 1, 1}}, smem, [&]() {{ fn(args); }});
    return 0;
}}
"""
    )


class EmuLauncher:
    """A :class:`seals_gpu.kernels.Launcher` running the emulated kernels on CPU tensors."""

    num_sms = 1  # keeps grids small: the grid-stride loops then do the work
    max_smem = 227 * 1024

    def __init__(self, libs: dict[str, ctypes.CDLL]) -> None:
        self.libs = libs
        self.calls: list[tuple[str, tuple[int, int, int], int]] = []

    def __call__(
        self, name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: Any, shared_mem: int
    ) -> None:
        holders: list[Any] = []
        for a in args:
            if isinstance(a, torch.Tensor):
                assert a.device.type == "cpu" and a.is_contiguous(), f"{name}: tensor args must be contiguous"
                holders.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, np.int32):
                holders.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.int64):
                holders.append(ctypes.c_int64(int(a)))
            elif isinstance(a, np.float32):
                holders.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"{name}: kernel argument of type {type(a).__name__} (use numpy scalars)")
        argv = (ctypes.c_void_p * len(holders))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders]
        )
        self.calls.append((name, grid, shared_mem))
        lib = self.libs[kernels._kernel_file(name)]
        rc = lib.emu_launch(
            name.encode(), ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]),
            ctypes.c_ulong(shared_mem), argv,
        )  # fmt: skip
        assert rc == 0, f"unknown kernel {name}"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> EmuLauncher:
    if CXX is None or not sys.platform.startswith("linux"):
        pytest.skip("the CPU emulation needs g++ on Linux")
    d = tmp_path_factory.mktemp("emu")
    libs = {}
    for name in kernels.SOURCES:
        cpp, so = d / f"{name}.cpp", d / f"{name}.so"
        cpp.write_text(_emulated_source(name))
        cmd = [
            CXX,
            "-O1",
            "-std=c++17",
            "-shared",
            "-fPIC",
            "-fno-strict-aliasing",
            "-w",
            "-o",
            str(so),
            str(cpp),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        libs[name] = ctypes.CDLL(str(so))
    return EmuLauncher(libs)


@needs_cxx
@pytest.mark.parametrize(
    ("dtype", "d", "variant"),
    [
        (torch.float32, 32, "score_rows_f32_v4"),
        (torch.float32, 13, "score_rows_f32_v1"),
        (torch.float16, 40, "score_rows_f16_v8"),
        (torch.float16, 20, "score_rows_f16_v1"),
    ],
)
def test_emu_phase1_scores_match_torch(emu: EmuLauncher, dtype: torch.dtype, d: int, variant: str) -> None:
    bt = make_batch(1, [37, 0, 160, 9, 1], d=d, dtype=dtype, kinds=[0, 1, 2, 2, 0])
    emu.calls.clear()
    got = kernels.score_candidates_cuda(bt["emb"], bt["rows"], bt["offsets"], *unit_args(bt), launch=emu)
    assert emu.calls[0][0] == variant
    ref = scoring.score_candidates(
        bt["emb"].float(),
        bt["rows"],
        bt["offsets"],
        *unit_args(bt),
        backend="torch",
        compute_dtype=torch.float64,
    )
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=1e-5)
    # duplicated rows give bit-identical scores (fixed reduction order)
    r = bt["rows"].numpy()
    N = bt["emb"].shape[0]
    base = np.where(r >= N - N // 2, r - N // 2, r)
    off = bt["offsets"].numpy()
    for u in range(off.size - 1):
        seg = slice(off[u], off[u + 1])
        for key in np.unique(base[seg]):
            same = got[seg][torch.from_numpy(base[seg] == key)]
            assert (same == same[0]).all()


def _phase2_case(case: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int | None]:
    """(scores, ids, offsets, b, chunk) for a phase-2 scenario."""
    g = torch.Generator().manual_seed(seed)
    if case == "random":
        lens, b, chunk = [0, 1, 7, 8, 9, 300, 2000], 8, None
    elif case == "ties":  # few distinct values: the boundary tie group is large -> id radix passes
        lens, b, chunk = [500, 3, 1200, 0, 64], 16, None
    elif case == "all_equal":
        lens, b, chunk = [3000, 10, 0], 32, None
    elif case == "levels":  # chunk far below the segment lengths: three reduction levels
        lens, b, chunk = [2500, 0, 130, 41, 900], 5, 40
    elif case == "b1":
        lens, b, chunk = [1, 0, 700, 2], 1, None
    elif case == "big_b":
        lens, b, chunk = [1500, 1024, 1023, 1025, 5], 1024, None
    else:
        raise AssertionError(case)
    off = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int64)
    M = int(off[-1])
    if case == "random":
        scores = torch.rand(M, generator=g)
    elif case in ("ties", "levels", "big_b"):
        scores = torch.randint(0, 6, (M,), generator=g).float() / 4 - 0.5  # 6 exact values: many ties
        scores[::7] = -0.0  # must tie with +0.0
    else:
        scores = torch.full((M,), 0.6931)
    ids = torch.randperm(10 * M + 10, generator=g)[:M] - 3 * M  # negative ids too
    return scores, ids, off, b, chunk


@needs_cxx
@pytest.mark.parametrize("case", ["random", "ties", "all_equal", "levels", "b1", "big_b"])
def test_emu_phase2_topb_is_exact(emu: EmuLauncher, case: str) -> None:
    scores, ids, off, b, chunk = _phase2_case(case, 7)
    got = kernels.topb_segments_cuda(scores, ids, off, b, chunk=chunk, launch=emu)
    assert_topb_equal(got, scoring._select_segments(scores, ids, off, b))


@needs_cxx
def test_emu_phase2_special_values(emu: EmuLauncher) -> None:
    """NaN ranks as -inf; -0.0 ties with +0.0 (then lower id first); +-inf are ordered."""
    scores = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf"), -1.0, 0.0, -0.0, 2.0])
    ids = torch.tensor([9, 3, 1, 7, 2, 5, 8, 4, 6])
    off = torch.tensor([0, 9])
    got = kernels.topb_segments_cuda(scores, ids, off, 7, launch=emu)
    assert got[1][0].tolist()[:6] == [float("inf"), 2.0, 0.0, 0.0, 0.0, 0.0]
    assert got[0][0].tolist() == [7, 6, 3, 4, 8, 9, 5]
    got = kernels.topb_segments_cuda(scores, ids, off, 9, launch=emu)
    assert got[0][0].tolist()[-2:] == [1, 2]  # NaN (id 1) and -inf (id 2) tie at -inf: lower id first


@needs_cxx
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_emu_score_select_matches_reference(emu: EmuLauncher, dtype: torch.dtype) -> None:
    bt = make_batch(3, [0, 50, 400, 3, 17, 1], d=24, dtype=dtype)
    b = 6
    got = kernels.score_select_cuda(
        bt["emb"], bt["rows"], bt["ids"], bt["offsets"], *unit_args(bt), b, launch=emu
    )
    truth = scoring.score_candidates(
        bt["emb"].float(),
        bt["rows"],
        bt["offsets"],
        *unit_args(bt),
        backend="torch",
        compute_dtype=torch.float64,
    )
    assert_topb_close(got, bt, b, truth, atol=1e-5)
    # and the selection itself is exact on the kernel's own scores
    s = kernels.score_candidates_cuda(bt["emb"], bt["rows"], bt["offsets"], *unit_args(bt), launch=emu)
    assert_topb_equal(got, scoring._select_segments(s, bt["ids"], bt["offsets"], b))


@needs_cxx
def test_emu_score_select_ties_resolve_to_lower_id(emu: EmuLauncher) -> None:
    bt = make_batch(4, [40, 25], d=16, kinds=[0, 2])
    bt["rows"][:] = 5  # every candidate is the same row: all scores equal per unit
    got = kernels.score_select_cuda(
        bt["emb"], bt["rows"], bt["ids"], bt["offsets"], *unit_args(bt), 10, launch=emu
    )
    off = bt["offsets"].numpy()
    for u in range(2):
        expect = np.sort(bt["ids"].numpy()[off[u] : off[u + 1]])[:10]
        assert got[0][u].tolist() == expect.tolist()
        assert (got[1][u] == got[1][u][0]).all()


@needs_cxx
@pytest.mark.parametrize("m_sub", [8, 6])
@pytest.mark.parametrize("per_candidate", [False, True])
def test_emu_pq_logits_match_reference(emu: EmuLauncher, m_sub: int, per_candidate: bool) -> None:
    pq = _pq_problem(m_sub=m_sub, lens=[0, 70, 300, 5])
    coarse = pq["coarse"]
    if per_candidate:
        coarse = _per_candidate_coarse(pq)
    emu.calls.clear()
    got = kernels.pq_logits_cuda(
        pq["codes"], pq["lists"], pq["offsets"], pq["lut"], coarse, pq["bias"], launch=emu
    )
    assert emu.calls[0][0] == ("pq_logits_u32" if m_sub % 4 == 0 else "pq_logits_u8")
    ref = reference.pq_logits_reference(
        pq["codes"], pq["lists"], pq["offsets"], pq["W"], pq["bias"], pq["C"], pq["Q"]
    )
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------------------ PQ references
def _pq_problem(
    *, m_sub: int = 8, lens: list[int], d: int = 48, nlist: int = 11, seed: int = 0
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    U = len(lens)
    off = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int64)
    M = int(off[-1])
    C = torch.randn(nlist, d, generator=g)
    Q = 0.3 * torch.randn(m_sub, 256, d // m_sub, generator=g)
    W = torch.randn(U, d, generator=g)
    bias = torch.randn(U, generator=g)
    coarse, lut = reference.pq_tables(W, C, Q)
    return dict(
        codes=torch.randint(0, 256, (M, m_sub), generator=g, dtype=torch.int64).to(torch.uint8),
        lists=torch.randint(0, nlist, (M,), generator=g, dtype=torch.int64).to(torch.int32),
        offsets=off, W=W, bias=bias, C=C, Q=Q, coarse=coarse, lut=lut,
    )  # fmt: skip


def _per_candidate_coarse(pq: dict[str, Any]) -> torch.Tensor:
    off = pq["offsets"]
    unit = torch.repeat_interleave(torch.arange(off.numel() - 1), off[1:] - off[:-1])
    return pq["coarse"][unit, pq["lists"].long()].contiguous()


@pytest.mark.parametrize("per_candidate", [False, True])
def test_pq_torch_matches_float64_reconstruction(per_candidate: bool) -> None:
    pq = _pq_problem(lens=[30, 0, 200, 1])
    coarse = _per_candidate_coarse(pq) if per_candidate else pq["coarse"]
    got = reference.pq_logits_torch(
        pq["codes"], pq["lists"], pq["offsets"], pq["lut"], coarse, pq["bias"], chunk=37
    )
    ref = reference.pq_logits_reference(
        pq["codes"], pq["lists"], pq["offsets"], pq["W"], pq["bias"], pq["C"], pq["Q"]
    )
    assert ref.dtype == torch.float64
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-5)
    via_dispatch = scoring.pq_logits(
        pq["codes"], pq["lists"], pq["offsets"], pq["lut"], coarse, pq["bias"], backend="auto"
    )
    torch.testing.assert_close(via_dispatch, got)


def test_pq_reference_decodes_like_faiss() -> None:
    """Our reconstruction of (list, code) equals FAISS's decoding of a residual IVF-PQ index."""
    import faiss

    rng = np.random.default_rng(0)
    d, nlist, m = 16, 4, 4
    x = rng.normal(size=(600, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quant = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quant, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x[:50])
    C, Q = reference.ivfpq_parts(index)
    assert C.shape == (nlist, d) and Q.shape == (m, 256, d // m)
    ids_l, codes_l, lists_l = [], [], []
    for lst in range(nlist):
        i, c = reference.ivfpq_list_codes(index, lst)
        ids_l.append(i)
        codes_l.append(c)
        lists_l.append(np.full(i.size, lst))
    ids = np.concatenate(ids_l)
    codes = torch.from_numpy(np.concatenate(codes_l))
    lists = torch.from_numpy(np.concatenate(lists_l))
    assert np.sort(ids).tolist() == list(range(50))
    xh = reference.pq_decode_reference(codes, lists, torch.from_numpy(C), torch.from_numpy(Q)).numpy()
    fa = index.sa_decode(index.sa_encode(x[ids]))
    np.testing.assert_allclose(xh, fa, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
# --------------------------------------------------------------------------------------------- 3. GPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [64, 13])
def test_gpu_score_select_matches_reference(dtype: torch.dtype, d: int) -> None:
    # lengths: empty, tiny, exactly b, one block, several levels (> chunk = 8192 and > 16 * chunk)
    lens = [0, 1, 64, 3000, 20_000, 150_000, 7]
    bt = make_batch(11, lens, N=5000, d=d, dtype=dtype, device="cuda")
    b = 64
    got = scoring.score_select(
        bt["emb"], bt["rows"], bt["ids"], bt["offsets"], *unit_args(bt), b, backend="cuda"
    )
    truth = scoring.score_candidates(
        bt["emb"].float().cpu(), bt["rows"].cpu(), bt["offsets"].cpu(), *(t.cpu() if isinstance(t, torch.Tensor)
        else t for t in unit_args(bt)), backend="torch", compute_dtype=torch.float64,
    )  # fmt: skip
    assert_topb_close((got.ids, got.scores, got.counts), bt, b, truth, atol=2e-5)
    s = scoring.score_candidates(bt["emb"], bt["rows"], bt["offsets"], *unit_args(bt), backend="cuda")
    torch.testing.assert_close(s.double().cpu(), truth, atol=2e-5, rtol=1e-5)
    ref = scoring._select_segments(s.cpu(), bt["ids"].cpu(), bt["offsets"].cpu(), b)
    assert_topb_equal((got.ids, got.scores, got.counts), ref)


@pytest.mark.gpu
@needs_gpu
def test_gpu_topb_ties_and_large_b() -> None:
    for case in ("ties", "all_equal", "levels", "b1", "big_b", "random"):
        scores, ids, off, b, chunk = _phase2_case(case, 3)
        got = kernels.topb_segments_cuda(scores.cuda(), ids.cuda(), off.cuda(), b, chunk=chunk)
        assert_topb_equal(got, scoring._select_segments(scores, ids, off, b))
    # a long all-equal segment: the top-b are the b smallest ids
    M = 300_000
    ids = torch.randperm(M, device="cuda") + 5
    got = kernels.topb_segments_cuda(
        torch.zeros(M, device="cuda"), ids, torch.tensor([0, M], device="cuda"), 1024
    )
    assert got[0][0].tolist() == list(range(5, 5 + 1024))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("m_sub", [8, 6])
def test_gpu_pq_logits_match_reference(m_sub: int) -> None:
    pq = _pq_problem(m_sub=m_sub, lens=[0, 700, 30_000, 5])
    got = scoring.pq_logits(
        pq["codes"].cuda(), pq["lists"].cuda(), pq["offsets"].cuda(), pq["lut"].cuda(), pq["coarse"].cuda(),
        pq["bias"].cuda(), backend="cuda",
    )  # fmt: skip
    ref = reference.pq_logits_reference(
        pq["codes"], pq["lists"], pq["offsets"], pq["W"], pq["bias"], pq["C"], pq["Q"]
    )
    torch.testing.assert_close(got.double().cpu(), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_gpu_available_reports_device() -> None:
    ok, reason = kernels.available(compile=True)
    assert ok, reason
    assert "sm_" in reason
