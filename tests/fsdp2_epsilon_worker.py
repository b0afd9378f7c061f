"""Run by tests/test_fsdp2.py under torchrun: FSDP2 over gloo with the CRReLU epsilons shared."""

import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import crrelu_llm
from crrelu_llm.ops.distributed import fsdp2_share_activation_parameters
from crrelu_llm.patching.tiny import tiny_causal_lm

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mesh = init_device_mesh("cpu", (world,))
model = tiny_causal_lm("gpt2")
crrelu_llm.patch_model(model)
reference = tiny_causal_lm("gpt2")  # a frozen DPO reference, sharded the way TRL does it
crrelu_llm.patch_model(reference)
reference.requires_grad_(False)
plugin = SimpleNamespace(fsdp_version=2, ignored_modules=None)
share = sys.argv[2] == "share"
if share:
    fsdp2_share_activation_parameters(plugin, model, torch.device("cpu"))
    fsdp2_share_activation_parameters(plugin, reference, torch.device("cpu"))
    ignored = {p for m in plugin.ignored_modules for p in m.parameters()}
else:
    ignored = None
try:
    for block in model.transformer.h:  # accelerate: one unit per block, then the root
        fully_shard(block, mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored)
    fully_shard(reference, mesh=mesh, ignored_params=ignored)  # TRL's prepare_fsdp: the root only
except ValueError as err:
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"error": str(err)}, f)
    sys.exit(0)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
tokens = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(rank))  # different data per rank
for _ in range(3):
    with torch.no_grad():
        reference_logits = reference(tokens).logits
    loss = model(tokens, labels=tokens).loss + 0.0 * reference_logits.float().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
values = [m.epsilon.item() for m in model.modules() if isinstance(m, crrelu_llm.CRReLU)]
gathered = [None] * world
dist.all_gather_object(gathered, values)
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"ranks": gathered}, f)
dist.barrier()  # no rank tears gloo down while another still talks to it
dist.destroy_process_group()
