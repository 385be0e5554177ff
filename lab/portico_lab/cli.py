"""portico-lab: a real Kubernetes control plane and a network of namespaces on one machine.

The lab runs etcd, kube-apiserver and kube-controller-manager (built from the Go module proxy and
cached in ~/.cache/portico), and builds a LAN of network namespaces in 198.18.0.0/15: a bridge,
clients, gateways and nodes, each node with pods that run an echo server. Nodes and Pods are real
API objects whose status the lab keeps true (there is no kubelet), so EndpointSlices and topology
hints come from Kubernetes itself.

Needs root. Typical use:

  portico-lab up                     # foreground; Ctrl-C tears it all down
  portico-lab up --detach            # background; `portico-lab down` tears it down
  eval "$(portico-lab env)"          # KUBECONFIG and the pinned kubectl on PATH
  kubectl get nodes,pods,endpointslices -o wide
  portico-lab exec client-1 -- curl -s http://198.19.1.2:8080/
  portico-lab pod add node-2 ; portico-lab node fail node-1 ; portico-lab node restore node-1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .binaries import bin_dir
from .lab import Lab, LabConfig, LabError, read_state, state_dir, stop_lab
from .plan import MAX_SLOTS, AddressPlan

READY_LINE = "Ctrl-C (or `portico-lab down`) tears the lab down."


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="portico-lab", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--slot", type=int, default=None, help="lab slot 0..3 (default: first lab)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="bring a lab up (foreground unless --detach)")
    up.add_argument("--nodes", type=int, default=3, help="nodes (default 3)")
    up.add_argument("--pods-per-node", type=int, default=2, help="echo pods per node (default 2)")
    up.add_argument("--zones", type=int, default=2, help="zones nodes are spread over (default 2)")
    up.add_argument("--gateways", type=int, default=1, help="gateway hosts (default 1)")
    up.add_argument("--clients", type=int, default=2, help="client hosts (default 2)")
    up.add_argument("--detach", action="store_true", help="run in the background and return")
    up.add_argument(
        "--kube-proxy",
        choices=("nftables", "iptables"),
        default=None,
        help="also run kube-proxy (the control plane's version) on every node, in this mode, "
        "as kind does: Portico's rules take the VIPs first, kube-proxy holds the health ports",
    )
    up.add_argument(
        "--no-portico",
        action="store_true",
        help="only the lab: no CRDs, VIPPool, operator or demo Service",
    )

    down = sub.add_parser("down", help="tear a lab down (also one whose owner crashed)")
    down.add_argument("--all", action="store_true", help="every slot")

    sub.add_parser("status", help="show running labs, their hosts and timings")
    sub.add_parser("env", help="print shell exports: KUBECONFIG and PATH with the pinned kubectl")
    sub.add_parser("build", help="build the pinned control plane into the cache; print its folder")

    k = sub.add_parser("kubectl", help="run the pinned kubectl against the lab")
    k.add_argument("args", nargs=argparse.REMAINDER)

    ex = sub.add_parser("exec", help="run a command in a host's or pod's namespace")
    ex.add_argument("target", help="node-N, gw-N, client-N, lan, or a pod name (echo-N-M)")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- command ...")

    pod = sub.add_parser("pod", help="pod actions")
    psub = pod.add_subparsers(dest="action", required=True)
    padd = psub.add_parser("add", help="add an echo pod to a node")
    padd.add_argument("node")
    padd.add_argument("--not-ready", action="store_true")
    for name, text in (
        ("remove", "delete the pod and its namespace"),
        ("ready", "report the pod Ready"),
        ("not-ready", "report the pod not Ready (its process keeps running)"),
        ("terminate", "delete with a grace period: the pod stays Terminating until removed"),
    ):
        psub.add_parser(name, help=text).add_argument("name")

    node = sub.add_parser("node", help="node actions")
    nsub = node.add_subparsers(dest="action", required=True)
    nfail = nsub.add_parser("fail", help="pull the node's cable and stop its lease renewals")
    nfail.add_argument("name")
    nfail.add_argument("--keep-heartbeat", action="store_true", help="only pull the cable")
    nsub.add_parser("restore", help="plug the node back in").add_argument("name")

    gw = sub.add_parser("gateway", help="gateway actions")
    gsub = gw.add_subparsers(dest="action", required=True)
    gsub.add_parser("add", help="add a gateway host on the LAN")
    return ap


def _print_ready(lab: Lab, bare: bool) -> None:
    p = lab.plan
    t = lab.timings or lab.state.timings
    print(
        f"portico lab {p.slot} is up in {t.get('endpointslices', 0):.1f}s "
        f"(apiserver ready at {t.get('readyz', 0):.1f}s)"
    )
    print(f"  apiserver   https://{p.host.ipv4}:{p.apiserver_port}")
    print(f"  kubeconfig  {lab.kubeconfig}")
    print(f"  LAN         {p.lan_v4} {p.lan_v6}   VIP range for pools: {p.vip_range_v4}")
    for n in lab.node_names():
        i = int(n.split("-")[1])
        print(f"  {n:<10}  {p.node(i).ipv4}  pods {p.pod_cidr_v4(i)}")
    print("Try:")
    print(f'  eval "$({_prog(p.slot)} env)"; kubectl get nodes,pods,endpointslices -o wide')
    if bare:  # no Portico: a pod's own address (with Portico, the VIP is shown below)
        print(f"  {_ask(f'{p.pod(1, 1).ipv4}:8080', p.slot)}")
    sys.stdout.flush()


def _prog(slot: int) -> str:
    """The command that reaches lab ``slot`` (the others default to slot 0)."""
    return "portico-lab" if slot == 0 else f"portico-lab --slot {slot}"


def _ask(where: str, slot: int) -> str:
    """The command that makes client-1 send one HTTP request to ``where``."""
    return (
        f"{_prog(slot)} exec client-1 -- python3 -c 'import urllib.request as u; "
        f'print(u.urlopen("http://{where}/").read().decode())\''
    )


def _cmd_up(args: argparse.Namespace) -> int:
    cfg = LabConfig(
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        zones=args.zones,
        gateways=args.gateways,
        clients=args.clients,
        slot=args.slot,
    )
    if args.detach:
        return _detach(args)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    lab = Lab.up(cfg)
    try:
        _print_ready(lab, bare=args.no_portico)
        from . import portico

        if args.kube_proxy:
            lab.procs.extend(portico.start_kube_proxies(lab, args.kube_proxy))
            print(f"kube-proxy ({args.kube_proxy} mode) runs on every node.")
        if not args.no_portico:
            t0 = time.monotonic()
            portico.install(lab)
            ip = portico.demo_service(lab)
            print(f"Portico is running (operator log: {lab.workdir}/logs/operator.log).")
            print(
                f"The demo Service default/echo-lb got {ip} in "
                f"{time.monotonic() - t0:.1f}s (CRDs, pool and operator start included):"
            )
            answer = portico.demo_traffic(lab, ip)
            print(f"client-1 asked {ip}:80; the gateway forwarded it to a healthy node, whose")
            print("agent sent it to a local pod; the pod saw the client's own address:")
            print("  " + answer)
            portico.wait_gateway_status(lab, "default", "echo-lb")
            print(lab.kubectl("get", "vippools,loadbalancers", "-A").stdout)
            print("Try (through the gateway, as above):")
            print(f"  {_ask(ip, lab.plan.slot)}")
            print(f"  {_prog(lab.plan.slot)} kubectl describe loadbalancer echo-lb")
        print(READY_LINE, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        lab.down()
        print("lab torn down", flush=True)
    return 0


def _detach(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "portico_lab.cli"]
    if args.slot is not None:
        argv += ["--slot", str(args.slot)]
    argv += [
        "up",
        f"--nodes={args.nodes}",
        f"--pods-per-node={args.pods_per_node}",
        f"--zones={args.zones}",
        f"--gateways={args.gateways}",
        f"--clients={args.clients}",
        *(["--no-portico"] if args.no_portico else []),
        *(["--kube-proxy", args.kube_proxy] if args.kube_proxy else []),
    ]
    log = Path("/tmp") / f"portico-lab-up-{os.getpid()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 900  # a cold control-plane build is included
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.stderr.write(log.read_text(errors="replace"))
            return 1
        text = log.read_text(errors="replace")
        if READY_LINE in text:
            print(text.split(READY_LINE)[0].rstrip())
            print(
                f"running in the background (pid {proc.pid}, log {log}); "
                "`portico-lab down` tears it down."
            )
            return 0
        time.sleep(0.2)
    proc.terminate()
    print(f"the lab did not come up; see {log}", file=sys.stderr)
    return 1


def _cmd_down(args: argparse.Namespace) -> int:
    slots = list(range(MAX_SLOTS)) if args.all or args.slot is None else [args.slot]
    if not args.all and args.slot is None:
        running = [s for s in slots if read_state(s) is not None]
        slots = running[:1] or slots
    stopped = [s for s in slots if stop_lab(s)]
    print(f"stopped lab slot(s) {stopped}" if stopped else "no lab was running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    found = False
    for s in range(MAX_SLOTS):
        st = read_state(s)
        if st is None:
            continue
        found = True
        plan = AddressPlan(s)
        print(
            json.dumps(
                {
                    "slot": s,
                    "phase": st.phase,
                    "owner_pid": st.owner_pid,
                    "config": st.config,
                    "kubeconfig": st.kubeconfig,
                    "apiserver": f"https://{plan.host.ipv4}:{plan.apiserver_port}",
                    "timings_s": {k: round(v, 2) for k, v in st.timings.items()},
                    "failed_nodes": sorted(
                        p.name for p in (state_dir(s) / "failed-nodes").glob("*")
                    ),
                },
                indent=2,
            )
        )
    if not found:
        print("no lab is running")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "up":
            return _cmd_up(args)
        if args.cmd == "down":
            return _cmd_down(args)
        if args.cmd == "status":
            return _cmd_status(args)
        if args.cmd == "build":
            print(bin_dir())
            return 0
        lab = Lab.attach(args.slot)
        if args.cmd == "env":
            print(f"export KUBECONFIG={lab.kubeconfig}")
            print(f'export PATH="{lab.bin_dir}:$PATH"')
            return 0
        if args.cmd == "kubectl":
            return subprocess.call(
                [str(lab.bin_dir / "kubectl"), f"--kubeconfig={lab.kubeconfig}", *args.args]
            )
        if args.cmd == "exec":
            cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not cmd:
                raise LabError("exec needs a command: portico-lab exec node-1 -- ip addr")
            from .procs import netns_argv

            return subprocess.call(netns_argv(lab.netns_of(args.target), cmd))
        if args.cmd == "pod":
            if args.action == "add":
                pod = lab.add_pod(args.node, ready=not args.not_ready)
                print(f"{pod.name} {pod.ipv4} {pod.ipv6} on {pod.node}")
            elif args.action == "remove":
                lab.remove_pod(args.name)
            elif args.action in ("ready", "not-ready"):
                lab.set_pod_ready(args.name, args.action == "ready")
            elif args.action == "terminate":
                lab.terminate_pod(args.name)
            return 0
        if args.cmd == "node":
            if args.action == "fail":
                lab.fail_node(args.name, stop_heartbeat=not args.keep_heartbeat)
            else:
                lab.restore_node(args.name)
            return 0
        if args.cmd == "gateway":
            gw = lab.add_gateway()
            print(f"{gw.name} {gw.ipv4} {gw.ipv6}")
            return 0
    except LabError as e:
        print(f"portico-lab: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
