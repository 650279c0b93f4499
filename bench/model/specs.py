"""Public figures of the GPUs the model names, one table, each with its source.

Per GPU: the SASS arch its kernels compile for, SMs, the boost clock the vendor quotes its
tensor-core figure at, dense 16-bit tensor-core TFLOP/s (fp16 / bf16 in, fp32 accumulate, no
sparsity), HBM (or GDDR) bandwidth, L2 bandwidth. Per SM and clock, for every arch here (CUDA C++
Programming Guide, "Arithmetic Instructions" throughput table and "Compute Capabilities"
tables): 4 warp-instructions issued (one per scheduler), 16 MUFU results (exp2, rcp, lg2; a
warp's 32 take 2 SM-clocks), 128 bytes of shared memory (32 banks of 4 bytes).

"achievable" is the tensor-core rate a GPU was *measured* to reach on a large bf16 matmul, used in
place of the spec where one exists: the H100 and H200 lent to this project ran an 8192^3 bf16
matmul at 769-798 TFLOP/s (/work/.library/device/KINDS.md, 2026-10/11); elsewhere the spec
scaled by the same measured fraction (0.79) is assumed.
"""

import dataclasses

# Measured 8192^3 bf16 torch.mm on this project's lent H100 / H200 (/work/.library/device/KINDS.md): 769-798 TFLOP/s.
MEASURED_MATMUL = {"H100 SXM": 798.0, "H200": 788.0}
MEASURED_SOURCE = "8192^3 bf16 matmul on the lent H100 / H200, /work/.library/device/KINDS.md (769-798 TFLOP/s)"
# The fraction of spec a well-tuned matmul reaches, for GPUs without a measurement here.
ACHIEVABLE_FRACTION = 798.0 / 989.4
# Legacy mma.sync (HMMA) on sm_90 / sm_100 runs below the wgmma / tcgen05 rate. Assumed 2/3 of
# the arch's dense rate on sm_90 (microbenchmarks of Hopper: mma.sync reaches well under the wgmma
# peak; Luo et al., "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture", 2024,
# arXiv:2402.13499) and 1/2 on sm_100 (HMMA is the Ampere-class path there). An assumption.
HMMA_FRACTION = {"sm80": 1.0, "sm86": 1.0, "sm90": 2 / 3, "sm100": 1 / 2}

ISSUE_PER_CLK = 4  # warp-instructions per SM per clock (4 schedulers)
MUFU_PER_CLK = 16  # MUFU lane results per SM per clock
SMEM_BYTES_PER_CLK = 128  # shared-memory bytes per SM per clock
PER_SM_SOURCE = (
    "CUDA C++ Programming Guide, Arithmetic Instructions throughput table (16 results/clk/SM for "
    "exp2/rcp/lg2 at cc 8.x-10.x; 4 warp schedulers per SM) and the shared-memory section (32 banks "
    "x 4 bytes per clock): https://docs.nvidia.com/cuda/cuda-c-programming-guide/"
)

# Limits per SM / per CTA for the occupancy (CUDA C++ Programming Guide, "Compute Capabilities").
ARCH_LIMITS = {
    # regs per SM, max warps per SM, max CTAs per SM, shared memory per SM (bytes), reserved per CTA
    "sm80": dict(regs=65536, warps=64, ctas=32, smem=164 * 1024, smem_reserved=1024),
    "sm86": dict(regs=65536, warps=48, ctas=16, smem=100 * 1024, smem_reserved=1024),
    "sm90": dict(regs=65536, warps=64, ctas=32, smem=228 * 1024, smem_reserved=1024),
    "sm100": dict(regs=65536, warps=64, ctas=32, smem=228 * 1024, smem_reserved=1024),
}


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    arch: str
    sms: int
    clock_ghz: float
    tensor_tflops: float  # dense fp16/bf16, fp32 accumulate
    dram_tbs: float
    l2_tbs: float
    source: str
    l2_source: str

    @property
    def achievable_tflops(self):
        return MEASURED_MATMUL.get(self.name, self.tensor_tflops * ACHIEVABLE_FRACTION)

    @property
    def achievable_source(self):
        if self.name in MEASURED_MATMUL:
            return MEASURED_SOURCE
        return f"spec x {ACHIEVABLE_FRACTION:.2f} (the measured H100 fraction; assumed)"


_L2_A100 = "A100 whitepaper: L2 read bandwidth 5120 bytes/clk"
_L2_ASSUMED = "no vendor figure: A100's 5120 bytes/clk (its whitepaper) at this GPU's clock, assumed"
GPUS = {
    g.name: g
    for g in (
        Gpu(
            "A10G", "sm86", 80, 1.71, 70.0, 0.600, 5120 * 1.71e9 / 1e12 / 2,
            "AWS EC2 G5 (A10G: 80 SMs, 24 GB GDDR6 at 600 GB/s) and the A10G/A10 comparison of "
            "https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/ (70 TFLOP/s dense "
            "bf16 tensor, against the A10's 125): https://aws.amazon.com/ec2/instance-types/g5/",
            "no vendor figure: half of A100's 5120 bytes/clk (GA102 has half the L2 slices), assumed",
        ),
        Gpu(
            "A100 SXM", "sm80", 108, 1.41, 312.0, 2.039, 5120 * 1.41e9 / 1e12,
            "NVIDIA A100 datasheet (312 TFLOP/s dense bf16, 2039 GB/s for 80 GB SXM) and Ampere "
            "whitepaper (108 SMs, 1410 MHz): https://images.nvidia.com/aem-dam/en-zz/Solutions/"
            "data-center/nvidia-ampere-architecture-whitepaper.pdf",
            _L2_A100,
        ),
        Gpu(
            "H100 SXM", "sm90", 132, 1.83, 989.4, 3.35, 5120 * 1.83e9 / 1e12,
            "NVIDIA H100 datasheet (989 TFLOP/s dense bf16, 3.35 TB/s) and H100 whitepaper (132 SMs; "
            "the tensor figure is at 1830 MHz): https://www.nvidia.com/en-us/data-center/h100/",
            _L2_ASSUMED,
        ),
        Gpu(
            "H200", "sm90", 132, 1.83, 989.4, 4.8, 5120 * 1.83e9 / 1e12,
            "NVIDIA H200 datasheet (989 TFLOP/s dense bf16, 4.8 TB/s HBM3e; the H100's GH100 die): "
            "https://www.nvidia.com/en-us/data-center/h200/",
            _L2_ASSUMED,
        ),
        Gpu(
            "B200", "sm100", 148, 1.86, 2250.0, 8.0, 5120 * 1.86e9 / 1e12,
            "NVIDIA HGX B200 specifications (2.25 PFLOP/s dense fp16/bf16 per GPU, 8 TB/s HBM3e; "
            "148 SMs): https://www.nvidia.com/en-us/data-center/hgx/",
            _L2_ASSUMED,
        ),
    )
}  # fmt: skip


def gpus_for(arch):
    """The GPUs whose kernels are compiled for `arch` ("sm80", ...)."""
    return [g for g in GPUS.values() if g.arch == arch]
