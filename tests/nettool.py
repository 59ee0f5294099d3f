"""Tiny TCP/UDP echo server and probe, run inside a netns by the policy
tests (no socat or nc on the lab hosts):

    python nettool.py serve tcp|udp PORT [PORT...]   # prints "ready", echoes
    python nettool.py probe tcp|udp HOST PORT [--sport N] [--timeout S]
                                                   # exit 0 if echoed, 1 if not

The server binds "::" with IPV6_V6ONLY off, so one socket serves IPv4 and
IPv6.
"""

import argparse
import select
import socket
import sys


def serve(proto, ports):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        if proto == "tcp":
            s.listen(16)
        socks.append(s)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            if proto == "tcp":
                conn, _ = s.accept()
                conn.settimeout(2)
                try:
                    data = conn.recv(100)
                    conn.sendall(data)
                except OSError:
                    pass
                conn.close()
            else:
                data, peer = s.recvfrom(100)
                s.sendto(data, peer)


def probe(proto, host, port, sport, timeout):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
    try:
        if proto == "tcp":
            s.connect((host, port))
            s.sendall(b"ping")
            data = s.recv(100)
        else:
            s.sendto(b"ping", (host, port))
            data, _ = s.recvfrom(100)
    except OSError as exc:
        print(f"no answer: {exc}")
        return 1
    finally:
        s.close()
    return 0 if data == b"ping" else 1


def main(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("ports", type=int, nargs="+")
    p = sub.add_parser("probe")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.proto, args.ports)
        return 0
    return probe(args.proto, args.host, args.port, args.sport, args.timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
