"""The agent's background threads: periodic jobs and the drop-event pump.

Every periodic job that touches endpoints, identities or policy is
submitted to the agent's single worker from its timer thread; the event
pump only reads the perf buffer and hands events to the hub.
"""

import threading


def every(stop, seconds, name, job, log):
    """Run job() every `seconds` on a daemon thread until stop is set."""
    def loop():
        while not stop.wait(seconds):
            try:
                job()
            except Exception:
                log.exception("periodic job %s failed", name)
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def pump_events(datapath, hub, stop, log):
    """Drain the datapath's perf buffer into the hub until stop is set."""
    def publish(event):
        event.setdefault("type", "drop")
        hub.publish(event)

    datapath.open_events(publish)
    while not stop.is_set():
        try:
            datapath.poll_events(200)
        except Exception:
            log.exception("reading datapath events failed")
            stop.wait(1.0)
