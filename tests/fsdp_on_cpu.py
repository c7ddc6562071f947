"""``workbench.train`` under real FSDP2 sharding on CPU, for the tests: launched by ``accelerate launch --config_file
accelerate/fsdp.yaml tests/fsdp_on_cpu.py <workbench.train arguments>``.

accelerate turns FSDP on only for multi-device groups (MULTI_GPU, MULTI_XPU, ...), never for a CPU (gloo) group,
although PyTorch's FSDP2 shards, all-gathers and reduce-scatters over gloo on CPU. This launcher lifts that one gate:
the gloo group the processes join on CPU is reported as MULTI_GPU, so the Trainer's accelerator prepares the student
with accelerate's own FSDP2 code (per-layer ``fully_shard``, the final-norm/output group, the root) on the CPU
device. Everything else is the shipped code path. With CUDA it changes nothing (the group is MULTI_GPU already).
Not for users: a CPU gains nothing from sharding; it lets CI test what FSDP runs do on GPUs.
"""

import sys

from accelerate.state import DistributedType, PartialState

_init = PartialState.__init__


def _init_reporting_a_device_group(self, cpu: bool = False, **kwargs):
    _init(self, cpu=cpu, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.MULTI_GPU


PartialState.__init__ = _init_reporting_a_device_group

if __name__ == "__main__":
    from workbench.train import main, script_exit

    script_exit(main(sys.argv[1:]))
