#!/usr/bin/env python3
"""Benchmark: no receipted message lost across repeated kill -9 of a server (issue 12's goal:
zero lost over 20 cycles; docs/messaging.md, "Persistence").

    python3 benches/messaging_kill9.py                  # CYCLES=20, release build
    CYCLES=50 PRODUCERS=4 python3 benches/messaging_kill9.py

One Managed Server with a persistent queue, built and started as benches/messaging_throughput.py
does (STEWARD_EXE / STOMP_LOAD to use given binaries). Each cycle: PRODUCERS stomp.py
connections send numbered 1 KB messages, each SEND with a receipt, while a consumer acks
(`client-individual`) what it receives; after a random 0.3-1.5 s the server process gets SIGKILL
(no warning); it is started again with `steward start-server` (the time until its STOMP listener
answers is the recovery time printed), and a consumer drains the queue. At the end, every
message whose receipt arrived must have been received at least once; a message received twice
must carry `redelivered:true` the second time. The script exits 1 if any receipted message is
lost or any duplicate is unflagged.

RECOVERY_FILL=N first fills the queue with N receipted 1 KB messages (the compiled stomp_load),
kills the server with SIGKILL and prints how long the restart takes to read that store back
(redb checks the whole file after a crash), then drains it before the cycles.
"""

import logging, os, random, statistics, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stomp  # noqa: E402  (stomp.py, PyPI: the same client the tests use)
from messaging_throughput import Steward, build, load  # noqa: E402

CYCLES = int(os.environ.get("CYCLES", "20"))
PRODUCERS = int(os.environ.get("PRODUCERS", "2"))
RECOVERY_FILL = int(os.environ.get("RECOVERY_FILL", "0"))
BODY_PAD = "x" * 1000
QUEUE = "/queue/bench"
# stomp.py logs every send on a connection the kill cut off: expected here, not news.
logging.getLogger("stomp.py").setLevel(logging.CRITICAL)


class Producer(stomp.ConnectionListener):
    """Sends `prefix-N` messages as fast as it can with at most 64 receipts outstanding."""

    def __init__(self, port, prefix, receipted):
        self.prefix, self.receipted, self.lock = prefix, receipted, threading.Lock()
        self.outstanding = threading.Semaphore(64)
        self.conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0))
        self.conn.set_listener("p", self)
        self.conn.connect("admin", "admin", wait=True)
        self.stop = False

    def on_receipt(self, frame):
        with self.lock:
            self.receipted.add(frame.headers["receipt-id"])
        self.outstanding.release()

    def on_disconnected(self):
        self.stop = True
        for _ in range(64):
            self.outstanding.release()

    def run(self):
        n = 0
        try:
            while not self.stop:
                self.outstanding.acquire()
                if self.stop:
                    break
                mid = f"{self.prefix}-{n}"
                n += 1
                self.conn.send(QUEUE, f"{mid} {BODY_PAD}", headers={"receipt": mid, "persistent": "true"})
        except Exception:  # the server was killed under it: expected
            pass


class Consumer(stomp.ConnectionListener):
    def __init__(self, port, seen):
        self.seen, self.last = seen, time.monotonic()
        self.conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0))
        self.conn.set_listener("c", self)
        self.conn.connect("admin", "admin", wait=True)
        self.conn.subscribe(QUEUE, id="1", ack="client-individual")

    def on_message(self, frame):
        mid = frame.body.split(" ", 1)[0]
        self.seen.append((mid, frame.headers.get("redelivered") == "true"))
        self.last = time.monotonic()
        try:
            self.conn.ack(frame.headers["ack"])
        except Exception:
            pass

    def close(self):
        try:
            self.conn.disconnect()
        except Exception:
            pass


def kill9(pid):
    """SIGKILL, then wait until the process holds no file (its stores' locks released). The
    thread group's leader shows as a zombie before its other threads are gone, and the files
    are closed only with the last one: its state alone is not enough."""
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if not os.listdir(f"/proc/{pid}/fd"):
                return
        except (FileNotFoundError, PermissionError):
            return
        time.sleep(0.01)
    sys.exit(f"pid {pid} still there 10 s after SIGKILL")


def recovery_after_fill(steward, gen):
    load(gen, steward, "fill", "--count", str(RECOVERY_FILL), "--consumers", "0")
    depth = steward.depth("bench")
    kill9(steward.pid)
    t0 = time.monotonic()
    steward.start_server()
    took = time.monotonic() - t0
    print(f"recovery of a store holding {depth} messages after kill -9: {took * 1000:.0f} ms "
          f"(start-server until STOMP answers; {steward.depth('bench')} back)", flush=True)
    drain = Consumer(steward.port, [])
    while steward.depth("bench") > 0 or time.monotonic() - drain.last < 0.3:
        time.sleep(0.2)
    drain.close()


def main():
    exe, gen = build()
    tmp = tempfile.mkdtemp(prefix="steward-kill9-")
    steward = Steward(exe, tmp)
    steward.start()
    receipted, seen, recovery, lost_total = set(), [], [], 0
    try:
        if RECOVERY_FILL:
            recovery_after_fill(steward, gen)
        for cycle in range(1, CYCLES + 1):
            consumer = Consumer(steward.port, seen)
            producers = [Producer(steward.port, f"c{cycle}p{i}", receipted) for i in range(PRODUCERS)]
            threads = [threading.Thread(target=p.run, daemon=True) for p in producers]
            for t in threads:
                t.start()
            time.sleep(random.uniform(0.3, 1.5))
            kill9(steward.pid)
            for t in threads:
                t.join(10)
            consumer.close()
            t0 = time.monotonic()
            steward.start_server()
            recovery.append(time.monotonic() - t0)
            drain = Consumer(steward.port, seen)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (steward.depth("bench") > 0 or time.monotonic() - drain.last < 0.3):
                time.sleep(0.1)
            drain.close()
            got = {m for m, _ in seen}
            lost = len(receipted - got)
            lost_total = lost
            print(f"cycle {cycle:2}: {len(receipted):7} receipted so far, {len(seen):7} received, "
                  f"lost {lost}, recovery {recovery[-1] * 1000:6.0f} ms", flush=True)
    finally:
        steward.stop()
    counts = {}
    unflagged = 0
    for mid, redelivered in seen:
        counts[mid] = counts.get(mid, 0) + 1
        if counts[mid] > 1 and not redelivered:
            unflagged += 1
    dups = sum(c - 1 for c in counts.values() if c > 1)
    unreceipted_received = len(set(counts) - receipted)
    print(f"\n{CYCLES} kill -9 cycles, {PRODUCERS} producers: {len(receipted)} messages receipted, "
          f"{lost_total} lost; {dups} received again (all flagged redelivered: {unflagged == 0}); "
          f"{unreceipted_received} received whose receipt the kill cut off")
    if recovery:
        print(f"recovery (start-server until STOMP answers) median {statistics.median(recovery) * 1000:.0f} ms, "
              f"max {max(recovery) * 1000:.0f} ms")
    sys.exit(1 if lost_total or unflagged else 0)


if __name__ == "__main__":
    main()
