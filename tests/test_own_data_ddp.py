"""Two gloo ranks with skipped samples: every rank cuts its micro-batch to the smallest rank's
size, passes over a micro-batch together when one rank's is empty, and the skips merge."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from climp.data.collate import ImageTextCollate
from climp.tokenizer import ClipBpeTokenizer
from climp.train.data import BatchStream
from climp.train.distributed import DistributedContext, gather_objects, min_across_ranks
from train_standins import SometimesBroken

BROKEN = (1, 2, 5, 6, 9, 10, 13, 14)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        context = DistributedContext(rank, 2, rank, torch.device("cpu"))
        data = SometimesBroken(n=16, broken=BROKEN)
        stream = BatchStream(data, ImageTextCollate(ClipBpeTokenizer()), batch_size=2, rank=rank,
                             world_size=2, seed=0, equalize=lambda n: min_across_ranks(n, context))
        steps = [stream.next_step()[0][0][:, 0, 0, 0].long().tolist() for _ in range(4)]
        merged = set()
        for records in gather_objects(data.skips.records(), context):
            merged |= set(records)
        results[rank] = {"steps": steps, "position": stream.position, "skips": len(merged)}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: about a minute on a shared 2-core machine
def test_ranks_agree_on_batch_sizes_with_skipped_samples():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for step in range(4):
        sizes = {len(results[rank]["steps"][step]) for rank in (0, 1)}
        assert len(sizes) == 1 and sizes != {0}
    assert results[0]["position"] == results[1]["position"]
    seen = [i for rank in (0, 1) for ids in results[rank]["steps"] for i in ids]
    assert not set(BROKEN) & set(seen)
    assert results[0]["skips"] == results[1]["skips"] > 0
