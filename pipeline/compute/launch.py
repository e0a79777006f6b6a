"""Stage commands start their own data-parallel processes, so `dvc repro` needs no other command.

A data-parallel stage calls :func:`data_parallel` first thing. With ``compute.processes: 1``
(the default), or inside a process a launcher already started, it returns and the stage runs
as before. With ``N > 1`` this process becomes the launcher: PyTorch's elastic agent (the
engine behind ``torchrun``) starts ``python -m <stage> <args>`` N times on this machine with
the usual ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` environment, waits for them, and exits with
their status. So the command in dvc.yaml stays ``python -m stages.extract mmlu`` whatever
``compute.processes`` says.

The rendezvous is torchrun's static one, except that its store listens on 127.0.0.1 only (a
socket bound here and handed to the store): these processes talk to no other machine.
Clusters of several machines launch the stage commands with their own ``torchrun
--nnodes ...`` (or ``accelerate launch``); a stage started that way finds ``WORLD_SIZE`` set
and joins that group instead.
"""

from __future__ import annotations

import os
import sys

from pipeline.core.errors import PipelineError

BACKEND = "semalign-loopback"


def data_parallel(module: str, argv: list[str] | None = None) -> None:
    """Return where this process should run the stage itself; otherwise launch and exit."""
    if "WORLD_SIZE" in os.environ:
        return  # a launcher (ours, torchrun's or accelerate's) started this process
    from pipeline.compute.placement import process_count, settings
    from pipeline.core.params import load_params

    stage = module.rsplit(".", 1)[-1]
    try:
        processes = process_count(settings(load_params()))
    except PipelineError as exc:  # a bad value fails here, before any process or model starts
        print(f"[{stage}] error: {exc}", file=sys.stderr)
        sys.exit(2)
    if processes > 1:
        sys.exit(launch(module, list(sys.argv[1:] if argv is None else argv), processes))


def one_process(module: str) -> None:
    """For stages whose work does not split: say so when several processes were asked for."""
    if "WORLD_SIZE" in os.environ:
        return
    from pipeline.compute.placement import settings
    from pipeline.core.params import load_params

    try:
        processes = settings(load_params()).processes
    except PipelineError:
        return  # the stage reports it
    if processes != 1:
        print(f"[{module.rsplit('.', 1)[-1]}] runs in one process (its work does not split; "
              f"compute.processes: {processes} applies to the data-parallel stages)", file=sys.stderr, flush=True)


def worker_env(processes: int) -> dict[str, str]:
    """Environment of the started processes: the loopback interface, and the CPU cores shared out."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    return {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(threads)}


def launch(module: str, argv: list[str], processes: int) -> int:
    """Run ``python -m module *argv`` in ``processes`` processes; their exit status (0: all succeeded)."""
    import socket

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry
    from torch.distributed.run import get_args_parser, run

    for key, value in worker_env(processes).items():
        if key not in os.environ or key != "OMP_NUM_THREADS":  # a user's thread count wins
            os.environ[key] = value
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    rendezvous_handler_registry.register(BACKEND, lambda params: _loopback_rendezvous(params, listener))
    args = get_args_parser().parse_args([
        "--nnodes", "1", "--nproc-per-node", str(processes), "--max-restarts", "0",
        "--rdzv-backend", BACKEND, "--rdzv-endpoint", f"127.0.0.1:{port}", "--monitor-interval", "0.2",
        "--module", module, *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {f.local_rank: f.exitcode for f in exc.failures.values()}
        print(f"[{module.rsplit('.', 1)[-1]}] failed in process(es) {sorted(codes)} "
              f"(exit status {sorted(set(codes.values()))}); their errors are above", file=sys.stderr)
        return next((c for c in codes.values() if c > 0), 1)
    return 0


def _loopback_rendezvous(params, listener):
    """torchrun's static rendezvous for one machine, its store on an already bound 127.0.0.1 socket."""
    import datetime

    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

    class Loopback(StaticTCPRendezvous):
        def get_backend(self) -> str:
            return BACKEND

    port = listener.getsockname()[1]
    handler = Loopback("127.0.0.1", port, rank=0, world_size=1, run_id=params.run_id, timeout=600)
    # The store owns the socket from here on (detach: Python must not close it under the store).
    handler._store = TCPStore("127.0.0.1", port, 1, True, datetime.timedelta(minutes=30), multi_tenant=True,
                              master_listen_fd=listener.detach())
    return handler
