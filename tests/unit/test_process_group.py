"""``metamapper.distributed`` on a one-rank Gloo group made in this process (the two-rank runs:
tests/integration/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from metamapper import distributed
from metamapper.cli import main


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_shutdown_leaves_the_group_and_is_a_no_op_outside_one(one_rank_group) -> None:
    assert dist.is_initialized() and distributed.rank_world() == (0, 1)
    distributed.shutdown()
    assert not dist.is_initialized() and distributed.rank_world() == (0, 1)
    distributed.shutdown()  # nothing to leave


def test_the_cli_leaves_the_group_after_a_command(one_rank_group, tmp_path) -> None:
    # (a torchrun'd command that exits with its group alive can abort a peer still connected)
    assert main(["study", "--report-only", "--results", str(tmp_path / "RESULTS.md")]) == 0
    assert not dist.is_initialized()
