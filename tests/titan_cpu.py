"""torchtitan's trainer on the CPU with gloo, for the tests (tests/test_titan.py).

torchtitan 0.2.2 takes its device from `torch._utils._get_available_device_type() or "cuda"`: with no
accelerator it picks CUDA and its Trainer stops at `torch.cuda.set_device` ("Found no NVIDIA driver
on your system"). `point_at_cpu()` rebinds the `device_type` / `device_module` names that
torchtitan's modules imported to "cpu" and a stand-in for torch.cuda's device API (no memory
statistics), after which the unchanged trainer runs on gloo:

    torchrun --nproc_per_node 4 tests/titan_cpu.py --job.config_file <toml> [--section.key value ...]
"""

import os
import sys
import types

import torch


def _cpu_device_module():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return types.SimpleNamespace(
        set_device=lambda *a: None, current_device=lambda: 0, device_count=lambda: 1, synchronize=lambda *a: None,
        get_device_name=lambda *a: "cpu", get_device_properties=lambda *a: types.SimpleNamespace(total_memory=total),
        memory_stats=lambda *a: {}, reset_peak_memory_stats=lambda *a: None, empty_cache=lambda: None,
    )  # fmt: skip


def point_at_cpu():
    """Makes every loaded torchtitan module see the CPU as its device (module doc)."""
    import torchtitan.train  # noqa: F401  (loads the modules whose names are rebound)

    cpu = _cpu_device_module()
    for name, module in list(sys.modules.items()):
        if not name.startswith("torchtitan"):
            continue
        if getattr(module, "device_type", None) == "cuda":
            module.device_type = "cpu"
        if getattr(module, "device_module", None) is torch.cuda:
            module.device_module = cpu


def main(argv):
    point_at_cpu()
    from torchtitan.config import ConfigManager
    from torchtitan.tools.logging import init_logger
    from torchtitan.train import Trainer

    init_logger()
    trainer = Trainer(ConfigManager().parse_args(argv))
    try:
        trainer.train()
    finally:
        trainer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    # Skip interpreter finalization, as examples/train_mesh.py does (its teardown() says why): gloo's
    # worker threads outlive destroy_process_group while torch's DTensor caches hold the mesh.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
