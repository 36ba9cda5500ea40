#!/usr/bin/env python3
"""Helpers of perf/compare/ramp_compare.sh (stdlib only).

  ramp_report.py pcap FILE.pcap --port P [--split-ms 250] > pcap.json
      Frame timing of the engine -> caller AudioSocket streams on the wire (a tcpdump
      capture of `tcp src port P` on lo), measured the same way for both engines:
      every audio frame is stamped with the kernel time of the TCP segment that
      completes it, and the inter-arrival deviation |dt - frame duration| is taken
      between consecutive frames of the same stream.
      "all":    every interval (what `voxd loadgen` measures at the caller; an engine
                that sends nothing between agent utterances shows each pause there).
      "speech": only intervals <= --split-ms; a longer interval is a pause between
                agent utterances (voxd sends silence frames, so it has none; the
                reference engine sends audio only while the agent speaks).

  ramp_report.py step DIR   > DIR/result.json    one step's figures from its logs
  ramp_report.py table OUT  > OUT/table.md       the tables over OUT/<engine>/<calls>/result.json
"""
import json
import os
import re
import struct
import sys

SLO_P99_US = 2000
SLO_P999_US = 5000
AVA_PUBLISHED_US = 200_000  # 20-50 calls per 8-core server: ~0.2 CPU per call


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def summary(vals):
    vals.sort()
    return {
        "count": len(vals),
        "p50": pct(vals, 0.50),
        "p99": pct(vals, 0.99),
        "p999": pct(vals, 0.999),
        "max": vals[-1] if vals else None,
    }


# --------------------------------------------------------------------------- pcap
def read_pcap(path):
    """(linktype, iterator of (ts_us, packet bytes)), streaming."""
    f = open(path, "rb")
    head = f.read(24)
    if len(head) < 24:
        return None, iter(())
    if struct.unpack("<I", head[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    else:
        e = ">"
    nano = struct.unpack(e + "I", head[:4])[0] == 0xA1B23C4D
    linktype = struct.unpack(e + "I", head[20:24])[0]

    def packets():
        with f:
            while True:
                h = f.read(16)
                if len(h) < 16:
                    return
                sec, frac, incl, _orig = struct.unpack(e + "IIII", h)
                pkt = f.read(incl)
                yield sec * 1_000_000 + (frac // 1000 if nano else frac), pkt
    return linktype, packets()


def l3_offset(linktype, pkt):
    if linktype == 1:  # Ethernet
        return 14 if struct.unpack(">H", pkt[12:14])[0] == 0x0800 else None
    if linktype == 113:  # Linux cooked
        return 16 if struct.unpack(">H", pkt[14:16])[0] == 0x0800 else None
    if linktype == 276:  # Linux cooked v2
        return 20 if struct.unpack(">H", pkt[0:2])[0] == 0x0800 else None
    if linktype in (0, 108):  # BSD loopback
        return 4
    if linktype in (101, 228):  # raw IPv4
        return 0
    return None


def cmd_pcap(args):
    path = args[0]
    port = int(args[args.index("--port") + 1])
    split_us = int(float(args[args.index("--split-ms") + 1]) * 1000) if "--split-ms" in args else 250_000
    rate = int(args[args.index("--rate") + 1]) if "--rate" in args else 8000
    ari_port = int(args[args.index("--ari-port") + 1]) if "--ari-port" in args else None
    stasis = []  # kernel time of each caller's StasisStart event (emulator -> engine)
    bytes_per_ms = rate * 2 // 1000
    linktype, pkts = read_pcap(path)
    flows = {}  # dst port -> state
    resyncs = 0
    for ts, pkt in pkts:
        o = l3_offset(linktype, pkt)
        if o is None or len(pkt) < o + 20:
            continue
        ihl = (pkt[o] & 0x0F) * 4
        total = struct.unpack(">H", pkt[o + 2:o + 4])[0]
        if pkt[o + 9] != 6:
            continue
        t = o + ihl
        sport, dport, seq = struct.unpack(">HHI", pkt[t:t + 8])
        doff = (pkt[t + 12] >> 4) * 4
        payload = pkt[t + doff:o + total]
        if not payload:
            continue
        if sport == ari_port:
            # Unmasked WebSocket text frames; a caller's StasisStart names a PJSIP/ channel.
            if b'"StasisStart"' in payload and b'"PJSIP/' in payload:
                stasis.append(ts)
            continue
        if sport != port:
            continue
        st = flows.setdefault(dport, {"next": None, "buf": b"", "frames": []})
        if st["next"] is None:
            st["next"] = seq
        if seq != st["next"]:
            if (seq - st["next"]) & 0xFFFFFFFF >= 0x80000000:  # retransmission / overlap
                back = (st["next"] - seq) & 0xFFFFFFFF
                if back >= len(payload):
                    continue
                payload = payload[back:]
                seq = st["next"]
            else:  # a hole (capture drop): restart at this segment (engines write whole frames)
                resyncs += 1
                st["buf"] = b""
                st["frames"].append(None)  # break the interval chain
        st["next"] = (seq + len(payload)) & 0xFFFFFFFF
        buf = st["buf"] + payload
        i = 0
        while len(buf) - i >= 3:
            kind = buf[i]
            ln = struct.unpack(">H", buf[i + 1:i + 3])[0]
            if len(buf) - i < 3 + ln:
                break
            if kind in (0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16):  # slin audio
                st["frames"].append((ts, ln))
                if "first_audio" not in st:
                    st.setdefault("first_frame", ts)
                    pcm = struct.unpack("<%dh" % (ln // 2), buf[i + 3:i + 3 + (ln // 2) * 2])
                    if pcm and max(abs(x) for x in pcm) > 64:
                        st["first_audio"] = ts
            i += 3 + ln
        st["buf"] = buf[i:]
    all_dev, speech_dev = [], []
    pauses = late_speech = frames = 0
    for st in flows.values():
        prev = None
        for fr in st["frames"]:
            if fr is None:
                prev = None
                continue
            frames += 1
            if prev is not None:
                dt = fr[0] - prev[0]
                dur_us = prev[1] * 1000 // bytes_per_ms if bytes_per_ms else 20_000
                dev = abs(dt - dur_us)
                all_dev.append(dev)
                if dt > split_us:
                    pauses += 1
                else:
                    speech_dev.append(dev)
                    if dt > dur_us + 10_000:
                        late_speech += 1
            prev = fr
    # Caller answered (StasisStart) -> first agent audio on the wire. Legs are not tied
    # to callers here: the k-th StasisStart is paired with the k-th leg to start
    # (callers are placed 1/rate apart, far more than either engine's set-up time).
    legs = sorted((st["first_frame"], st.get("first_audio")) for st in flows.values() if "first_frame" in st)
    stasis.sort()
    answer_to_audio, answer_to_leg = [], []
    for k, (ff, fa) in enumerate(legs[:len(stasis)]):
        answer_to_leg.append(ff - stasis[k])
        if fa is not None:
            answer_to_audio.append(fa - stasis[k])
    json.dump({
        "callers_stasis": len(stasis),
        "answer_to_first_frame": summary(answer_to_leg),
        "answer_to_first_audio": summary(answer_to_audio),
        "streams": len(flows),
        "frames": frames,
        "split_ms": split_us / 1000,
        "pauses": pauses,
        "late_in_runs": late_speech,
        "capture_resyncs": resyncs,
        "all": summary(all_dev),
        "speech": summary(speech_dev),
    }, sys.stdout, indent=1)
    print()


# --------------------------------------------------------------------------- step
def grab(pattern, text, cast=int, default=None):
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else default


def cmd_step(args):
    d = args[0]
    rd = lambda n: open(os.path.join(d, n), errors="replace").read() if os.path.exists(os.path.join(d, n)) else ""
    meta = json.loads(rd("meta.json") or "{}")
    out = rd("loadgen.out")
    err = rd("loadgen.err")
    r = {"meta": meta}
    try:
        r["loadgen"] = json.loads(rd("loadgen.json"))
    except ValueError:
        r["loadgen"] = None
    try:
        r["pcap"] = json.loads(rd("pcap.json"))
    except ValueError:
        r["pcap"] = None
    r["callers_placed"] = grab(r"callers placed (\d+)", out)
    r["legs_originated"] = grab(r"media legs originated (\d+)", out)
    r["left_channels"] = grab(r"left behind: (\d+) channel", out)
    r["calls_started"] = grab(r"calls started (\d+)", out)
    r["connect_failures"] = grab(r"connect failures (\d+)", out)
    r["closed_by_engine"] = grab(r"closed by voxd (\d+)", out)
    r["call_errors"] = grab(r"call errors (\d+)", out)
    r["sim_turns"] = grab(r"provider sim \(\w+\): connections \d+, turns (\d+)", out)
    r["sim_connections"] = grab(r"provider sim \(\w+\): connections (\d+)", out)
    r["sim_violations"] = grab(r"protocol violations: (\S+)", out, str)
    r["loadgen_error"] = next((l for l in err.splitlines() if l.startswith("error") or "Error" in l), None)
    r["rss_idle_kib"] = meta.get("rss_idle_kib")
    alog = rd("engine.log")
    if meta.get("engine") == "ava":
        r["media_rx_confirmed"] = alog.count("Media RX confirmed")
        levels = re.findall(r'"level": "([a-z]+)"', alog)
        r["engine_log_levels"] = {k: levels.count(k) for k in sorted(set(levels))}
    else:
        r["engine_log_levels"] = {
            "warn": len(re.findall(r"\bWARN\b", alog)), "error": len(re.findall(r"\bERROR\b", alog))}
    json.dump(r, sys.stdout, indent=1)
    print()


# --------------------------------------------------------------------------- table
def fmt_ms(us, nd=2):
    return "-" if us is None else f"{us / 1000:.{nd}f}"


def fmt_int(v):
    return "-" if v is None else f"{int(round(v)):,}"


def verdict(r):
    """(pass, reason). The timing SLO on the frames the engine sends while the agent
    speaks (pcap "speech"; loadgen's own figure when there is no capture), zero gaps,
    and every placed call reached media and heard the agent."""
    lg = r.get("loadgen")
    calls = r["meta"].get("calls")
    if not lg:
        return False, "no report (" + (r.get("loadgen_error") or "loadgen did not finish") + ")"
    reasons = []
    if lg["calls"] < calls:
        reasons.append(f"{calls - lg['calls']} calls never reached media")
    nsa = lg["counts"]["calls_without_agent_audio"]
    if nsa:
        reasons.append(f"{nsa} calls without agent audio")
    pc = r.get("pcap")
    d = pc["speech"] if pc and pc["speech"]["count"] else lg["inter_arrival_dev_us"]
    if d["p99"] is None or d["p99"] > SLO_P99_US:
        reasons.append("p99")
    if d["p999"] is None or d["p999"] > SLO_P999_US:
        reasons.append("p99.9")
    if lg["gaps"]:
        reasons.append("gaps")
    return (not reasons), ", ".join(reasons)


def load1(r):
    return (r["meta"].get("load_after") or "-").split(" ")[0]


def broken(r):
    """The engine broke down: a call never reached media or never heard the agent, or
    frames stalled by a whole frame or more while the agent spoke (p99 >= 20 ms)."""
    ok, why = verdict(r)
    if "never reached" in why or "without agent audio" in why or "no report" in why:
        return True
    pc = r.get("pcap")
    d = pc["speech"] if pc and pc["speech"]["count"] else r["loadgen"]["inter_arrival_dev_us"]
    return d["p99"] is None or d["p99"] >= 20_000


def cmd_table(args):
    out = args[0]
    rows = []
    for eng in ("ava", "voxd"):
        ed = os.path.join(out, eng)
        if not os.path.isdir(ed):
            continue
        steps = sorted((int(s) for s in os.listdir(ed) if s.isdigit()))
        for s in steps:
            p = os.path.join(ed, str(s), "result.json")
            if os.path.exists(p):
                rows.append((eng, s, json.load(open(p))))
    if not rows:
        print("(no results)")
        return
    meta0 = rows[0][2]["meta"]
    print(f"Window {meta0.get('window')} s after the ramp, ramp {meta0.get('rate')} calls/s, "
          f"AudioSocket slin 8 kHz, OpenAI Realtime simulator (think {meta0.get('think_ms', 300)} ms, "
          f"reply {meta0.get('reply_ms', 1500)} ms). Deviation = |inter-arrival - 20 ms| of the engine's "
          f"frames: \"speech\" from the capture, intervals <= {rows[0][2].get('pcap', {}) and rows[0][2]['pcap'].get('split_ms')} ms "
          f"(pauses between agent utterances excluded); \"loadgen\" = every interval as `voxd loadgen` "
          f"measures it.\n")
    print("| engine | calls | dev p50 / p99 / p99.9 ms (speech) | dev p99 / p99.9 ms (loadgen) | pauses | gaps | "
          "first audio p50 / p99 ms (leg) | answer->first audio p50 / p99 ms | turn-think p50 ms | engine CPU us/call-s | engine cores | RSS KiB/call | "
          "reached media / placed | no agent audio | failed | loadgen late ticks | load avg 1 min | SLO |")
    print("|" + "---|" * 18)
    for eng, s, r in rows:
        lg = r.get("loadgen")
        pc = r.get("pcap")
        ok, why = verdict(r)
        if not lg:
            print(f"| {eng} | {s} | - | - | - | - | - | - | - | - | - | - | - / {fmt_int(r.get('callers_placed'))} | - | - | - | "
                  f"{load1(r)} | FAIL ({why}) |")
            continue
        sp = pc["speech"] if pc else None
        d = lg["inter_arrival_dev_us"]
        fa = lg["first_audio_us"]
        tt = lg["turn_minus_think_us"]
        proc = lg.get("process") or {}
        cpu = proc.get("cpu_us_per_call_second")
        cores = proc.get("cores_busy")
        rss_after = (proc.get("after") or {}).get("rss_bytes")
        idle = r.get("rss_idle_kib")
        rss_call = (rss_after / 1024 - idle) / lg["calls"] if (rss_after and idle and lg["calls"]) else None
        reached = lg["calls"]
        if r["meta"].get("engine") == "ava" and r.get("media_rx_confirmed") is not None:
            reached_s = f"{reached} ({r['media_rx_confirmed']} AVA RX) / {fmt_int(r.get('callers_placed'))}"
        else:
            reached_s = f"{reached} / {fmt_int(r.get('callers_placed'))}"
        failed = (r.get("connect_failures") or 0) + (r.get("call_errors") or 0)
        aa = pc.get("answer_to_first_audio") if pc else None
        a2a = f"{fmt_ms(aa['p50'], 0)} / {fmt_ms(aa['p99'], 0)}" if aa and aa["count"] else "-"
        sp_s = f"{fmt_ms(sp['p50'], 3)} / {fmt_ms(sp['p99'])} / {fmt_ms(sp['p999'])}" if sp and sp["count"] else "-"
        print(f"| {eng} | {s} | {sp_s} | {fmt_ms(d['p99'])} / {fmt_ms(d['p999'])} | "
              f"{pc['pauses'] if pc else '-'} | {lg['gaps']} | {fmt_ms(fa['p50'], 0)} / {fmt_ms(fa['p99'], 0)} | {a2a} | "
              f"{fmt_ms(tt['p50'], 0)} | {fmt_int(cpu)} | {'-' if cores is None else f'{cores:.2f}'} | "
              f"{fmt_int(rss_call)} | {reached_s} | {lg['counts']['calls_without_agent_audio']} | {failed} | "
              f"{lg['counts']['caller_late_ticks']} | {load1(r)} | {'pass' if ok else 'FAIL (' + why + ')'} |")

    # Summary.
    print()
    by = {}
    for eng, s, r in rows:
        by.setdefault(eng, {})[s] = r
    def cap(eng):
        last = None
        for s in sorted(by.get(eng, {})):
            if verdict(by[eng][s])[0]:
                last = s
            else:
                break
        return last
    common = [s for s in sorted(by.get("ava", {})) if s in by.get("voxd", {})
              and by["ava"][s].get("loadgen") and by["voxd"][s].get("loadgen")]
    # The common step for per-call figures: the largest step both engines passed,
    # else the largest both completed.
    passing = [s for s in common if verdict(by["ava"][s])[0] and verdict(by["voxd"][s])[0]]
    healthy = [s for s in common if not broken(by["ava"][s]) and not broken(by["voxd"][s])]
    cs = (passing or healthy or common or [None])[-1]
    def fig(eng, key):
        r = by.get(eng, {}).get(cs)
        if not r or not r.get("loadgen"):
            return None
        lg = r["loadgen"]
        if key == "cpu":
            return (lg.get("process") or {}).get("cpu_us_per_call_second")
        if key == "p99":
            pc = r.get("pcap")
            return pc["speech"]["p99"] if pc and pc["speech"]["count"] else lg["inter_arrival_dev_us"]["p99"]
        if key == "fa50":
            return lg["first_audio_us"]["p50"]
        if key == "fa99":
            return lg["first_audio_us"]["p99"]
        if key in ("aa50", "aa99"):
            aa = (r.get("pcap") or {}).get("answer_to_first_audio")
            return aa and aa["count"] and aa["p50" if key == "aa50" else "p99"] or None
    def ratio(a, v, inv=False):
        if a in (None, 0) or v in (None, 0):
            return "-"
        return f"{(v / a):.3g}x"
    ca, cv = cap("ava"), cap("voxd")
    top = {e: max(by[e]) if by.get(e) else None for e in ("ava", "voxd")}
    print(f"Summary (per-call figures at the common step: {cs} calls, the largest both engines "
          f"{'passed' if passing else 'ran without breakdown' if healthy else 'completed'})\n")
    print("| metric | AVA | voxd | voxd / AVA |")
    print("|---|---|---|---|")
    def capstr(c, e):
        if c is None:
            return f"< {min(by[e])}" if by.get(e) else "-"
        return f"{c}" + (" (largest step run)" if c == top[e] else "")
    print(f"| capacity (last passing step) | {capstr(ca, 'ava')} | {capstr(cv, 'voxd')} | "
          f"{ratio(ca, cv) if ca and cv else '-'}{' (at least)' if cv == top.get('voxd') else ''} |")
    def best(eng):
        ok = [s for s in sorted(by.get(eng, {})) if verdict(by[eng][s])[0]]
        return ok[-1] if ok else None
    ba, bv = best("ava"), best("voxd")
    def working(eng):
        last = None
        for s in sorted(by.get(eng, {})):
            if broken(by[eng][s]):
                break
            last = s
        return last
    wa, wv = working("ava"), working("voxd")
    print(f"| working capacity: last step before breakdown (a call without media or agent audio, or p99 >= 20 ms while speaking) | "
          f"{wa or '-'} | {wv or '-'} | {ratio(wa, wv) if wa and wv else '-'} |")
    print(f"| largest passing step (any) | {ba or '-'} | {bv or '-'} | {ratio(ba, bv) if ba and bv else '-'} |")
    def cpu_at(eng, s):
        r = by.get(eng, {}).get(s)
        return (r and r.get("loadgen") and (r["loadgen"].get("process") or {}).get("cpu_us_per_call_second")) or None
    for s in common:
        if s == cs:
            continue
        a, v = cpu_at("ava", s), cpu_at("voxd", s)
        mark = lambda e, x: fmt_int(x) + (" (broke down)" if broken(by[e][s]) else "")
        print(f"| engine CPU per call-second at {s} calls, us | {mark('ava', a)} | {mark('voxd', v)} | {ratio(a, v)} |")
    a, v = fig("ava", "cpu"), fig("voxd", "cpu")
    print(f"| **engine CPU per call-second at {cs} calls, us** | {fmt_int(a)} | {fmt_int(v)} | {ratio(a, v)} |")
    print(f"| calls per core at that cost (1e6 / us) | {fmt_int(1e6 / a) if a else '-'} | {fmt_int(1e6 / v) if v else '-'} | {ratio(v, a) if a and v else '-'} |")
    a, v = fig("ava", "p99"), fig("voxd", "p99")
    print(f"| p99 deviation while speaking, ms | {fmt_ms(a)} | {fmt_ms(v)} | {ratio(a, v)} |")
    a, v = fig("ava", "aa50"), fig("voxd", "aa50")
    print(f"| caller answered (StasisStart) -> first agent audio p50, ms | {fmt_ms(a, 0)} | {fmt_ms(v, 0)} | {ratio(a, v)} |")
    a, v = fig("ava", "aa99"), fig("voxd", "aa99")
    print(f"| caller answered (StasisStart) -> first agent audio p99, ms | {fmt_ms(a, 0)} | {fmt_ms(v, 0)} | {ratio(a, v)} |")
    a, v = fig("ava", "fa50"), fig("voxd", "fa50")
    print(f"| media leg up -> first agent audio (loadgen) p50, ms | {fmt_ms(a, 0)} | {fmt_ms(v, 0)} | {ratio(a, v)} |")
    a, v = fig("ava", "fa99"), fig("voxd", "fa99")
    print(f"| media leg up -> first agent audio (loadgen) p99, ms | {fmt_ms(a, 0)} | {fmt_ms(v, 0)} | {ratio(a, v)} |")
    v = fig("voxd", "cpu")
    print(f"| AVA published sizing: 20-50 calls per 8-core server, ~0.2 CPU per call | "
          f"{AVA_PUBLISHED_US:,} us/call-s | {fmt_int(v)} | {ratio(AVA_PUBLISHED_US, v)} |")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("pcap", "step", "table"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    {"pcap": cmd_pcap, "step": cmd_step, "table": cmd_table}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
