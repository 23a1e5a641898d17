"""The baileys sidecar's auth state survives a SIGKILL in the middle of its writes.

Baileys' own file store writes creds.json in place; a sidecar killed mid-write left it
truncated, and the next start read "no credentials" and asked for a new QR (seen in
the end-to-end test that SIGKILLs a sidecar). The sidecar's store writes a temporary
file and renames it over the old one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.fakewa import node_env, require_node_modules

pytestmark = pytest.mark.slow

AUTH_STATE_JS = (
    Path(__file__).parents[1] / "enginehost/plugins/baileys_bridge/sidecar/lib/auth-state.js"
)

# Saves creds (made large, so a write takes a while) and keys as fast as it can.
WRITER = """
const { useCrashSafeAuthState } = require(process.argv[1]);
const baileys = require('baileys');
const logger = { error() {}, warn() {}, info() {} };
(async () => {
  const { state, saveCreds } = await useCrashSafeAuthState(process.argv[2], baileys, logger);
  state.creds.padding = 'x'.repeat(2_000_000);
  process.stdout.write('ready\\n');
  for (let round = 0; ; round += 1) {
    state.creds.round = round;
    await Promise.all([
      saveCreds(),
      state.keys.set({ session: { [`peer${round % 5}.0`]: { round } } }),
    ]);
  }
})();
"""

READER = """
const { useCrashSafeAuthState } = require(process.argv[1]);
const baileys = require('baileys');
const logger = { error(o, m) { process.stderr.write(m + '\\n'); }, warn() {}, info() {} };
(async () => {
  const { state } = await useCrashSafeAuthState(process.argv[2], baileys, logger);
  const keys = await state.keys.get('session', ['peer0.0', 'peer1.0']);
  process.stdout.write(JSON.stringify({ round: state.creds.round ?? null, keys }) + '\\n');
})();
"""


def test_a_sigkill_mid_write_leaves_readable_credentials(tmp_path: Path) -> None:
    require_node_modules()
    folder = tmp_path / "auth"
    for attempt in range(5):
        writer = subprocess.Popen(
            ["node", "-e", WRITER, str(AUTH_STATE_JS), str(folder)],
            env=node_env(),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "ready"
            time.sleep(0.2 + 0.05 * attempt)  # somewhere in the middle of a write
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(10)
        read = subprocess.run(
            ["node", "-e", READER, str(AUTH_STATE_JS), str(folder)],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert read.returncode == 0, read.stderr
        assert "unreadable" not in read.stderr
        state = json.loads(read.stdout)
        assert isinstance(state["round"], int)  # the credentials survived, not fresh ones
        # Interrupted writes leave no temporary files behind once the store is opened.
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
