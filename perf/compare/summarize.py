#!/usr/bin/env python3
"""Summarize a run of run_reference_vs_emulator.sh: the call flow seen from the ARI
side (ari_proxy.py's rest.jsonl / events.jsonl), from the reference engine's log
(ava.log, structlog JSON lines) and from voxd loadgen's report.

    summarize.py LOGDIR
"""

import collections
import json
import os
import re
import sys


def jsonl(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"_raw": line})
    return out


KEYWORDS = {"externalMedia", "answer", "variable", "play", "addChannel", "removeChannel",
            "continue", "redirect", "dtmf", "record", "info", "hangup", "ring", "mute",
            "hold", "moh", "silence", "snoop", "dial", "move"}


def template(method, path, query):
    segs = path.split("/")
    out = []
    for i, s in enumerate(segs):
        if i >= 3 and segs[i - 1] in ("channels", "bridges", "playbacks", "recordings") \
                and s not in KEYWORDS:
            out.append("{id}")
        elif i >= 4 and segs[i - 1] == "play":
            out.append("{playbackId}")
        else:
            out.append(s)
    t = "/".join(out)
    if t.endswith("/variable") and method == "GET":
        t += "?variable=" + str(query.get("variable", ""))
    return t


def classify(method, tmpl, status, msg, gone=False):
    """What real Asterisk would have answered, as far as we can tell. `gone`: the
    channel in the path had been destroyed (ChannelDestroyed) before the request."""
    if status == 502 and msg.startswith("proxy:"):
        return "emulator already stopped (end of run): not an emulator answer"
    if method == "GET" and "/variable?variable=" in tmpl and status == 404:
        name = tmpl.split("?variable=", 1)[1]
        if "(" in name:
            return "MISMATCH: Asterisk evaluates dialplan functions here and answers 200"
        return "same on Asterisk: variable not set on the channel"
    if method == "DELETE" and status == 404:
        return "same on Asterisk: channel/bridge already gone (AVA tolerates 404)"
    if status == 404 and gone:
        return "same on Asterisk: the channel was already destroyed"
    if method == "POST" and tmpl in ("/ari/channels", "/ari/channels/externalMedia") and status == 500:
        return ("loadgen refused the media leg (it only plays the --rate-hz/--codec format it was "
                "started with, or could not connect): not what Asterisk would do")
    return "CHECK"


def message_of(resp):
    if isinstance(resp, dict):
        return resp.get("message") or json.dumps(resp)[:120]
    return str(resp)[:120]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py LOGDIR")
    d = sys.argv[1]
    rest = jsonl(os.path.join(d, "rest.jsonl"))
    events = jsonl(os.path.join(d, "events.jsonl"))
    ava = jsonl(os.path.join(d, "ava.log"))
    p = print

    p("=" * 78)
    p("reference engine (AVA) vs voxd's ARI emulator")
    if os.path.exists(os.path.join(d, "run.txt")):
        p("run: " + open(os.path.join(d, "run.txt")).read().strip().replace("\n", " | "))
    p("logs: " + d)

    # ---------------- loadgen ----------------
    p("\n--- voxd loadgen (emulator side) ---")
    lg = os.path.join(d, "loadgen.out")
    if os.path.exists(lg):
        for line in open(lg):
            if re.match(r"(calls |loadgen: calls|ari:|provider sim|turns unanswered|loadgen: \d)", line):
                p("  " + line.rstrip())
    lge = os.path.join(d, "loadgen.err")
    if os.path.exists(lge):
        for line in open(lge):
            if not line.startswith("["):
                p("  [stderr] " + line.rstrip())

    # ---------------- events ----------------
    p("\n--- ARI events WebSocket ---")
    opens = [e for e in events if e.get("marker") == "client-open"]
    for o in opens[:3]:
        p(f"  connect #{o['ws']}: {o['path']}?" + "&".join(f"{k}={v}" for k, v in o["query"].items()))
    if len(opens) > 3:
        p(f"  ... {len(opens)} connects in all")
    refused = [e for e in events if e.get("marker") in ("upstream-refused", "upstream-error")]
    if refused:
        p(f"  connects refused/failed upstream: {len(refused)} (first: {refused[0]})")
    evs = [e["event"] for e in events if isinstance(e.get("event"), dict)]
    c = collections.Counter(e.get("type") for e in evs)
    p("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    starts = collections.Counter(
        e["channel"]["name"].split("/")[0] for e in evs
        if e.get("type") == "StasisStart" and isinstance(e.get("channel"), dict))
    p("  StasisStart by technology: " + ", ".join(f"{k} {v}" for k, v in starts.items()))

    # ---------------- REST ----------------
    p("\n--- ARI REST requests (method path status: count) ---")
    c = collections.Counter((r["method"], template(r["method"], r["path"], r.get("query") or {}),
                             r["status"]) for r in rest if "method" in r)
    for (m, t, s), n in sorted(c.items(), key=lambda x: (x[0][1], x[0][0], x[0][2])):
        p(f"  {m:6} {t:60} {s}: {n}")
    destroyed_at = {}
    for e in events:
        ev = e.get("event")
        if isinstance(ev, dict) and ev.get("type") == "ChannelDestroyed":
            destroyed_at.setdefault(ev["channel"]["id"], e["t"])
    errs = collections.Counter()
    for r in rest:
        if "status" in r and r["status"] >= 400:
            segs = r["path"].split("/")
            chan = segs[3] if len(segs) > 3 and segs[2] == "channels" else None
            gone = chan in destroyed_at and destroyed_at[chan] <= r["t"] + 0.001
            errs[(r["method"], template(r["method"], r["path"], r.get("query") or {}), r["status"],
                  message_of(r.get("response")), gone)] += 1
    p("\n  non-2xx responses:" + ("" if errs else " none"))
    for (m, t, s, msg, gone), n in sorted(errs.items(), key=lambda x: -x[1]):
        p(f"    {n:4} x {m} {t} -> {s} {msg}   [{classify(m, t, s, msg, gone)}]")

    p("\n  media-leg requests (first of each kind):")
    seen = set()
    for r in rest:
        if r.get("method") == "POST" and r.get("path") in ("/ari/channels", "/ari/channels/externalMedia"):
            if r["path"] in seen:
                continue
            seen.add(r["path"])
            p(f"    POST {r['path']} query={r.get('query')} body={json.dumps(r.get('body'))} -> {r['status']}")
            if isinstance(r.get("response"), dict):
                resp = r["response"]
                p(f"      response: id={resp.get('id')} name={resp.get('name')} state={resp.get('state')} "
                  f"channelvars={resp.get('channelvars')}")

    # ---------------- per call ----------------
    callers = [e["channel"]["id"] for e in evs if e.get("type") == "StasisStart"
               and e["channel"]["name"].split("/")[0] in ("PJSIP", "SIP")]
    ok = lambda r: 200 <= r.get("status", 0) < 300
    ava_media = collections.defaultdict(set)
    for a in ava:
        ev = str(a.get("event", ""))
        cid = a.get("call_id") or a.get("caller_channel_id") or a.get("channel_id")
        if cid and re.search(r"Media RX confirmed|UUID bound|first audio|RTP.*(first|received)|first RTP", ev, re.I):
            ava_media[cid].add(ev)
    p("\n--- per caller ---")
    reached_media = 0
    for cid in callers:
        answered = any(ok(r) and r["path"] == f"/ari/channels/{cid}/answer" for r in rest)
        def members(r):
            ch = str((r.get("body") or {}).get("channel") or (r.get("query") or {}).get("channel", ""))
            return [x.strip() for x in ch.split(",") if x.strip()]
        bridges = {r["path"].split("/")[3] for r in rest if ok(r) and r["path"].endswith("/addChannel")
                   and cid in members(r)}
        leg_ids = set()
        # legs: channels originated while this caller's bridge existed and added to it
        for r in rest:
            if ok(r) and r["path"].endswith("/addChannel") and r["path"].split("/")[3] in bridges:
                for x in members(r):
                    if x != cid:
                        leg_ids.add(x)
        caller_deleted = [r["status"] for r in rest if r["method"] == "DELETE" and r["path"] == f"/ari/channels/{cid}"]
        legs_deleted = [r["status"] for r in rest if r["method"] == "DELETE"
                        and r["path"].split("/")[-1] in leg_ids]
        br_deleted = [r["status"] for r in rest if r["method"] == "DELETE"
                      and r["path"].startswith("/ari/bridges/") and r["path"].split("/")[-1] in bridges]
        destroyed = [e for e in evs if e.get("type") == "ChannelDestroyed" and e["channel"]["id"] == cid]
        media = bool(ava_media.get(cid))
        reached_media += media
        p(f"  {cid}: answered={answered} bridge={','.join(sorted(bridges)) or '-'} "
          f"legs_added={','.join(sorted(leg_ids)) or '-'} media_at_AVA={media} "
          f"DELETE caller={caller_deleted or '-'} legs={legs_deleted or '-'} bridge={br_deleted or '-'} "
          f"destroyed(cause)={[e.get('cause_txt') for e in destroyed] or '-'}")

    # ---------------- AVA ----------------
    p("\n--- AVA log ---")
    levels = collections.Counter(a.get("level", "raw") for a in ava)
    p("  lines by level: " + ", ".join(f"{k} {v}" for k, v in levels.items()))
    milestones = [
        "Successfully connected to ARI HTTP endpoint.", "Successfully connected to ARI WebSocket.",
        "🎯 HYBRID ARI - Step 1: ✅ Caller channel answered", "🎯 HYBRID ARI - Step 2: ✅ Bridge created",
        "🎯 HYBRID ARI - AudioSocket channel originated", "AudioSocket connection accepted",
        "AudioSocket UUID bound", "🎯 HYBRID ARI - ✅ AudioSocket channel added to bridge",
        "🎯 EXTERNAL MEDIA - ExternalMedia channel originated",
        "🎯 EXTERNAL MEDIA - ExternalMedia channel entered Stasis",
        "Media RX confirmed (AudioSocket)", "Media RX confirmed (ExternalMedia)",
        "Stasis ended", "Channel destroyed", "Call cleanup completed",
    ]
    evc = collections.Counter(str(a.get("event", "")) for a in ava)
    for m in milestones:
        p(f"  {evc.get(m, 0):4}  {m}")
    bad = collections.Counter(str(a.get("event", ""))[:110] for a in ava
                              if a.get("level") in ("error", "critical", "warning"))
    p("  errors/warnings (count, first 110 chars):")
    for ev, n in bad.most_common(25):
        p(f"    {n:4} x {ev}")
    tb = [a["_raw"] for a in ava if "_raw" in a and "Traceback" in a["_raw"]]
    if tb:
        p(f"  tracebacks in raw output: {len(tb)}")

    # ---------------- tally ----------------
    p("\n--- tally ---")
    byp = collections.Counter()
    for (m, t, s, msg, gone), n in errs.items():
        byp[f"{m} {t} {s} ({classify(m, t, s, msg, gone).split(':')[0]})"] += n
    p(f"  calls placed (caller StasisStart): {len(callers)}; reached media at AVA: {reached_media}")
    p("  REST errors by path: " + ("; ".join(f"{k}: {v}" for k, v in byp.most_common()) or "none"))
    p("=" * 78)


if __name__ == "__main__":
    main()
