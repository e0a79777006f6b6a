"""A loopback SFTP server for the sharing test (asyncssh, which DVC already depends on).

    python tests/sftp_server.py KEY_DIR ROOT

Writes a fresh ed25519 host key and client key pair into KEY_DIR, listens on 127.0.0.1
on a port the OS picks, lets in only the holder of KEY_DIR/client_key, confines the
session to ROOT (chroot: the remote path /store is ROOT/store), prints ``PORT <n>`` once
it accepts connections and serves until it is terminated.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncssh


def write_keys(key_dir: Path) -> None:
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key_dir / "host_key"))
    client = asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(str(key_dir / "client_key"))
    client.write_public_key(str(key_dir / "client_key.pub"))


async def serve(key_dir: Path, root: Path) -> None:
    server = await asyncssh.listen(
        "127.0.0.1", 0,
        server_host_keys=[str(key_dir / "host_key")],
        authorized_client_keys=str(key_dir / "client_key.pub"),
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root)),
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()  # until SIGTERM


def main() -> None:
    key_dir, root = Path(sys.argv[1]), Path(sys.argv[2])
    write_keys(key_dir)
    asyncio.run(serve(key_dir, root.resolve()))


if __name__ == "__main__":
    main()
