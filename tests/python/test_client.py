"""quiver.load(..., device="cpu"): in-process and through quiverd (from the
store and from its DRAM tier), compared tensor by tensor with the exported
safetensors files. Run by run.sh; exit 0 pass, 1 fail, 77 skipped."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (QUIVER, Daemon, check, compare, expect_error, finish,  # noqa: E402
                    make_store, quiver, read_export, released, run, torch)

SCRATCH = os.environ.get("QV_SCRATCH") or "/tmp/qv-scratch-python-client"


def load_one(label, root, spec, ref, via, want_source):
    got = quiver.load(spec, device="cpu", root=root, via=via)
    info = quiver.load_info(got)
    check(info["source"] == want_source, f"{label} {spec}: source {info['source']}, wanted {want_source}")
    compare(f"{label} {spec}", got, ref, "cpu")
    check(info["bytes"] == got.arena.numel(), f"{label} {spec}: info bytes != arena size")
    return got


def load_all(label, root, refs, via, want_source):
    for spec, ref in refs.items():
        load_one(label, root, spec, ref, via, want_source)


def main():
    print(f"torch {torch.__version__}, libquiver {quiver.library_path()}")
    root, exports = make_store(SCRATCH)
    refs = {spec: read_export(d) for spec, d in exports.items()}
    check(len(refs["llama@v1"]) > 10 and len(refs["mixed"]) >= 12, "the exports hold the tensors")
    # current is v2: a version whose tensors differ from v1's in part
    check(any(not torch.equal(refs["llama@v1"][k].view(-1).view(torch.uint8),
                              refs["llama@current"][k].view(-1).view(torch.uint8))
              for k in refs["llama@v1"]), "llama v1 and v2 differ")

    # ---- in-process (no daemon runs) ----
    check(not quiver.daemon_running(root), "no daemon runs yet")
    load_all("in-process(auto)", root, refs, "auto", "in-process")
    released("in-process", lambda: load_one("in-process", root, "llama@v1", refs["llama@v1"], "auto",
                                            "in-process"), version="v1")
    load_all("in-process(local)", root, {"mixed": refs["mixed"]}, "local", "in-process")
    # QUIVER_ROOT stands for root=
    os.environ["QUIVER_ROOT"] = root
    try:
        got = quiver.load("mixed")
        compare("QUIVER_ROOT", got, refs["mixed"], "cpu")
    finally:
        del os.environ["QUIVER_ROOT"]
    # without it, the library's default under HOME; with neither, a clear error
    home = os.environ.get("HOME")
    try:
        os.environ["HOME"] = "/nonexistent-home"
        got = quiver._lib.default_root()
        check(got == "/nonexistent-home/.local/share/quiver", f"default root under HOME: {got}")
        del os.environ["HOME"]
        expect_error("no HOME, no QUIVER_ROOT", lambda: quiver.load("mixed"), "QUIVER_ROOT or HOME")
    finally:
        if home is not None:
            os.environ["HOME"] = home

    # ---- errors, in-process ----
    e = expect_error("unknown model", lambda: quiver.load("nosuch", root=root), "nosuch")
    check(e is not None and e.code == -1001, f"unknown model: code {e and e.code}, wanted QV_ENOTFOUND")
    expect_error("unknown ref", lambda: quiver.load("llama@v9", root=root), "v9")
    expect_error("bad spec", lambda: quiver.load("llama@", root=root), "llama@")
    expect_error("bad via", lambda: quiver.load("llama", root=root, via="ssh"), "via")
    expect_error("daemon required", lambda: quiver.load("llama", root=root, via="daemon"),
                 "no daemon", root)
    # a root whose socket path is too long for a Unix socket has no daemon
    # (none could bind it): loads fall back to in-process
    deep = os.path.join(SCRATCH, "d" * 100, "e" * 100)
    run(QUIVER, "--root", deep, "publish", "mixed", os.path.join(SCRATCH, "mixed.safetensors"))
    check(quiver.daemon_running(deep) is False, "daemon_running of a root too long for a socket")
    load_one("long root", deep, "mixed", refs["mixed"], "auto", "in-process")

    # ---- through the daemon ----
    d = Daemon(root, SCRATCH)
    try:
        check(quiver.daemon_running(root), "the daemon answers")
        load_all("daemon-store", root, refs, "auto", "daemon-store")
        released("daemon-store", lambda: load_one("daemon-store", root, "llama", refs["llama@current"],
                                                  "auto", "daemon-store"), version="v2")
        # warm: the DRAM tier serves the next loads
        for spec in ("llama@v1", "llama@current", "mixed"):
            model, _, ref = spec.partition("@")
            req = {"op": "warm", "model": model}
            if ref:
                req["ref"] = ref
            quiver.daemon_call(req, root=root)
        load_all("daemon-dram", root, refs, "daemon", "daemon-dram")
        # a load held costs no open descriptor (an mmap.mmap would keep one)
        fds0 = len(os.listdir("/proc/self/fd"))
        held = [quiver.load("mixed", root=root, via="daemon") for _ in range(20)]
        fds1 = len(os.listdir("/proc/self/fd"))
        check(fds1 - fds0 < 5, f"20 host loads held keep {fds1 - fds0} more descriptors open")
        compare("daemon-dram, the 20th held", held[-1], refs["mixed"], "cpu")
        del held
        kept = load_one("daemon-dram", root, "mixed", refs["mixed"], "daemon", "daemon-dram")
        # in-process while the daemon runs
        load_all("local+daemon", root, {"llama@v1": refs["llama@v1"]}, "local", "in-process")
        e = expect_error("daemon: unknown model", lambda: quiver.load("nosuch", root=root), "nosuch")
        check(e is not None and e.code == -1001, f"daemon unknown model: code {e and e.code}")
        expect_error("daemon: unknown ref", lambda: quiver.load("llama@v9", root=root), "v9")
        expect_error("daemon: bad op", lambda: quiver.daemon_call({"op": "nope"}, root=root), "unknown op")
    finally:
        rc = d.stop()
    check(rc == 0, f"quiverd exit {rc} after SIGTERM")
    # a host load outlives the daemon (the memfd mapping is ours)
    compare("after the daemon stopped", kept, refs["mixed"], "cpu")
    box = [kept]
    del kept
    released("daemon-dram", box.pop)
    finish("python_client")


if __name__ == "__main__":
    main()
