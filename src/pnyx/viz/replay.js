// The replay page of a pnyx simulated run. Plain JavaScript, no dependencies.
// The data (see pnyx/viz/replay.py) is a list of compact events; the picture at
// event i is the state after applying events 0..i, rebuilt from the nearest
// snapshot (one every SNAP events) so stepping back is as cheap as forward.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const KINDS = D.kinds, EV = D.ev, MSGS = D.msgs, META = D.meta;
  const K = {}; KINDS.forEach((k, n) => { K[k] = n; });
  const KV = META.kind === "kv";
  const IDS = D.nodes.filter((n) => n > 0);
  const QUORUM = Math.floor(IDS.length / 2) + 1;
  const SNAP = 1000;
  const SVGNS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const ms = (us) => (us / 1000).toFixed(3);

  // ------------------------------------------------------------------ ballots
  function bkey(b) {
    if (!b) return [-1, -1];
    const p = String(b).split(".");
    return [Number(p[0]), Number(p[1] || 0)];
  }
  function bcmp(a, b) {
    const x = bkey(a), y = bkey(b);
    return x[0] - y[0] || x[1] - y[1];
  }

  // -------------------------------------------------------------------- state
  function fresh() {
    const nodes = {};
    for (const id of IDS) {
      nodes[id] = { up: true, role: KV ? "follower" : "", ballot: "", promised: "", acc: "",
        learned: "", value: "", commit: 0, hi: 0, slots: {}, promises: {}, votes: {},
        leader: 0 };
    }
    return { i: -1, sent: 0, delivered: 0, lost: 0, chosen: null, flights: {}, nodes, cut: null };
  }

  function raise(n, b) { if (bcmp(b, n.promised) > 0) n.promised = b; }

  function apply(s, e, idx) {
    const k = e[1];
    s.i = idx;
    if (k === K.send) {
      s.sent++;
      s.flights[idx] = 1;
      const m = MSGS[e[4]], n = s.nodes[e[2]];
      if (!n) return;
      const y = m.y, x = m.x || {};
      if (y === "prepare") {
        n.ballot = m.b; n.promises = {}; n.votes = {};
        if (KV) raise(n, m.b); // a candidate promises its own ballot first
        n.role = KV ? "candidate" : "phase 1: prepare " + m.b;
      } else if (y === "prevote") { n.role = "pre-candidate";
      } else if (y === "promise") { raise(n, m.b); if (KV) { n.role = "follower"; }
      } else if (y === "accept") {
        n.ballot = m.b;
        if (KV) {
          n.role = "leader"; n.leader = e[2]; raise(n, m.b);
          if (x.commit > n.commit) n.commit = x.commit;
          if (m.n > n.hi) n.hi = m.n;
          n.slots[m.n] = [m.b, m.v]; // the leader accepts its own proposal too
        } else { n.role = "phase 2: accept " + m.b + "=" + m.v; n.value = m.v; }
      } else if (y === "accepted") {
        raise(n, m.b);
        if (KV) {
          // The acceptor's own record of the slot (value from the matching Accept).
          const prev = n.slots[m.n];
          if (!prev || prev[0] !== m.b) n.slots[m.n] = [m.b, prev ? prev[1] : "?"];
          if (m.n > n.hi) n.hi = m.n;
        } else { n.acc = m.b + ":" + m.v; }
      } else if (y === "heartbeat") {
        n.role = "leader"; n.ballot = m.b; n.leader = e[2]; raise(n, m.b);
        if (x.commit > n.commit) n.commit = x.commit;
      } else if (y === "heartbeatack") { raise(n, m.b); }
    } else if (k === K.deliver) {
      s.delivered++;
      if (e[5] >= 0) delete s.flights[e[5]];
      const m = MSGS[e[4]], n = s.nodes[e[3]];
      if (!n) return;
      const y = m.y, x = m.x || {};
      if (y === "promise") {
        if (m.b === n.ballot) n.promises[m.s] = x.acc || (x.slots ? x.slots.length + " slots" : "");
      } else if (y === "accepted") {
        const key = (m.n || 0) + "@" + m.b + "=" + (m.v || "");
        (n.votes[key] = n.votes[key] || {})[m.s] = 1;
      } else if (y === "rejected" && !KV) {
        n.role = "pre-empted by " + x.promised + ": backing off";
      } else if (KV && (y === "accept" || y === "heartbeat")) {
        if (m.s !== e[3]) { n.leader = m.s; n.role = "follower"; }
        if (y === "accept") {
          const prev = n.slots[m.n];
          if (bcmp(m.b, n.promised) >= 0) n.slots[m.n] = [m.b, m.v];
          else if (!prev) { /* refused: nothing recorded */ }
          if (m.n > n.hi) n.hi = m.n;
        }
        if (x.commit > n.commit) n.commit = Math.min(x.commit, Math.max(n.hi, n.commit));
      } else if (KV && y === "chosen") {
        for (const sl of x.slots || []) { n.slots[sl] = ["chosen", "(caught up)"]; if (sl > n.hi) n.hi = sl; }
        if (x.commit > n.commit) n.commit = x.commit;
      }
    } else if (k === K.drop || k === K.lost) {
      s.lost++;
      if (e[5] >= 0) delete s.flights[e[5]];
    } else if (k === K.learn) {
      const n = s.nodes[e[2]]; if (n) { n.learned = e[3]; n.role = "learned " + e[3]; }
    } else if (k === K.propose) {
      const n = s.nodes[e[2]]; if (n) { n.value = e[3]; n.role = "asked to propose " + e[3]; }
    } else if (k === K.chosen) {
      s.chosen = e[2];
    } else if (k === K.crash) {
      for (const id of e[2]) if (s.nodes[id]) { s.nodes[id].up = false; }
    } else if (k === K.restart) {
      for (const id of e[2]) if (s.nodes[id]) { const n = s.nodes[id]; n.up = true; n.role = KV ? "follower" : "restarted"; }
    } else if (k === K.partition) {
      s.cut = e[2].slice();
    } else if (k === K.heal) {
      s.cut = null;
    }
  }

  // Snapshots every SNAP events, built once, so any event is at most SNAP steps away.
  const snaps = [];
  (function index() {
    const s = fresh();
    snaps.push(structuredClone(s));
    for (let i = 0; i < EV.length; i++) {
      apply(s, EV[i], i);
      if ((i + 1) % SNAP === 0) snaps.push(structuredClone(s));
    }
  })();

  function stateAt(i) {
    if (i < 0) return fresh();
    const base = Math.floor((i + 1) / SNAP);
    const s = structuredClone(snaps[Math.min(base, snaps.length - 1)]);
    for (let j = Math.min(base, snaps.length - 1) * SNAP; j <= i; j++) apply(s, EV[j], j);
    return s;
  }

  // ------------------------------------------------------------- explanations
  const P = "pnyx.protocol.";
  const SEED = {
    check1: "Check one: promise only a sequence number higher than any seen",
    phase1: "Phase 1: a proposer selects a proposal number n and sends a prepare request with number n to a majority of acceptors",
    promise: "Phase 1: promise never to accept a proposal numbered less than n, and report the highest-numbered proposal accepted",
    value: "Phase 1 result: v is the value of the highest-numbered proposal among the responses, or any value if none was reported",
    phase2: "Phase 2: with responses from a majority, send accept(n, v)",
    acceptRule: "Accept rule: an acceptor accepts a proposal numbered n unless it has responded to a prepare request numbered greater than n",
    learn: "Learners: a value is chosen once a majority of acceptors have accepted it",
    safety1: "Safety 1: only a value that has been proposed may be chosen; only a single value is chosen",
    safety3: "Safety 3: a process never learns that a value has been chosen unless it actually has been",
    duel: "Liveness: two proposers can keep issuing higher numbers forever (duelling proposers); a distinguished proposer, or randomness, ends it",
    fault: "The model: processes fail by stopping and may restart; messages can take arbitrarily long, be duplicated, and be lost, but are not corrupted",
    durable: "Acceptors must remember what they promised and accepted, even if they fail and restart (stable storage)",
    any: "Write requests may go to any member",
    gap: "Knows 1–134, 138, 139: phase 1 for 135–137 and all above 139; gaps are filled with no-op commands",
    pipe: "The leader can propose command 142 before it learns that its proposed command 141 has been chosen",
    learners: "Learners; distinguished learners inform the others",
    readLearner: "Read as a learner: ask all, take the majority's value, else fail",
  };

  function msgRule(e, s, delivered) {
    const m = MSGS[e[4]], x = m.x || {}, y = m.y;
    const me = s.nodes[delivered ? e[3] : e[2]] || {};
    const r = (rule, fn, why) => ({ rule, fn, why });
    if (y === "prepare") {
      if (delivered) {
        const p = me.promised;
        const ok = bcmp(m.b, p) > 0;
        return r(SEED.check1, KV ? P + "multipaxos.acceptor.Acceptor.on_prepare (" + P + "synod.acceptor.may_promise)"
          : P + "synod.acceptor.may_promise (Acceptor.on_prepare)",
          !p ? "check one: nothing promised yet, so promise " + m.b
            : ok ? "check one: " + m.b + " > " + p + ", so promise"
              : "check one: " + m.b + " ≤ " + p + ", so refuse (Rejected, promised " + p + ")");
      }
      if (KV) {
        const known = (x.known || []).length ? "; already knows " + x.known.join(", ") + " chosen" : "";
        return r(SEED.gap, P + "multipaxos.election.Election.start_phase1",
          "node " + e[2] + " runs phase 1 with ballot " + m.b + " for every slot from " + x.first + known);
      }
      return r(SEED.phase1, P + "synod.proposer.Proposer._start_phase1",
        "node " + e[2] + " prepares with ballot " + m.b + " (round " + bkey(m.b)[0] + ", its id " + bkey(m.b)[1] + "), above any ballot it has seen");
    }
    if (y === "promise") {
      if (delivered) {
        const got = Object.keys(me.promises || {}).length + (m.b === me.ballot ? 1 : 0);
        return r(SEED.phase2, KV ? P + "multipaxos.election.Election.on_promise" : P + "synod.proposer.Proposer.on_promise",
          m.b === me.ballot ? "promise " + got + " of the " + QUORUM + " needed for ballot " + m.b + (got >= QUORUM ? ": a quorum, phase 2 may start" : "")
            : "a promise for " + m.b + ", no longer this proposer's ballot " + (me.ballot || "—") + ": ignored");
      }
      const rep = KV ? (x.slots && x.slots.length ? "reports slots " + x.slots.slice(0, 12).join(", ") + (x.slots.length > 12 ? "…" : "") + " accepted earlier" : "reports nothing accepted")
        : (x.acc ? "reports its accepted proposal " + x.acc : "reports that it accepted nothing");
      return r(SEED.promise, KV ? P + "multipaxos.acceptor.Acceptor.on_prepare" : P + "synod.acceptor.Acceptor.on_prepare",
        "node " + e[2] + " promises ballot " + m.b + " and " + rep);
    }
    if (y === "accept") {
      if (delivered) {
        const p = me.promised;
        const ok = bcmp(m.b, p) >= 0;
        return r(SEED.acceptRule, KV ? P + "multipaxos.acceptor.Acceptor.on_accept (" + P + "synod.acceptor.may_accept)"
          : P + "synod.acceptor.may_accept (Acceptor.on_accept)",
          (ok ? m.b + " ≥ promised " + (p || "nothing") + ", so accept" : m.b + " < promised " + p + ", so refuse")
          + (KV ? " slot " + m.n + " = " + m.v : " " + m.v));
      }
      if (KV) {
        if (m.v === "no-op") {
          return r(SEED.gap, P + "multipaxos.election.Election.pick_value, " + P + "multipaxos.pipeline.Pipeline.fill_window",
            "slot " + m.n + ": no acceptor in the quorum reported a value, so the gap is filled with a no-op");
        }
        const inflight = me.hi > me.commit ? Math.max(0, Math.max(me.hi, m.n) - me.commit - 1) : 0;
        return r(inflight > 0 ? SEED.pipe : SEED.phase2, P + "multipaxos.pipeline.Pipeline.fill_window / Pipeline.propose",
          "leader " + e[2] + " proposes slot " + m.n + " = " + m.v + " in ballot " + m.b + " (commit " + (x.commit || 0) + ")"
          + (inflight > 0 ? "; " + inflight + " earlier slots not yet known chosen" : ""));
      }
      const reps = Object.entries(me.promises || {});
      const vals = reps.filter((kv) => kv[1]).map((kv) => kv[1] + " from " + kv[0]);
      let best = null;
      for (const v of vals) { const b = v.split(":")[0]; if (!best || bcmp(b, best.split(":")[0]) > 0) best = v; }
      return r(SEED.value, P + "synod.proposer.choose_value (highest_numbered)",
        vals.length ? "reported: " + vals.join(", ") + "; the highest-numbered is " + best.split(" from ")[0] + ", so the value is " + m.v
          : "no acceptor in the quorum reported a value, so the proposer's own " + m.v);
    }
    if (y === "accepted") {
      if (delivered) {
        const key = (m.n || 0) + "@" + m.b + "=" + (m.v || "");
        const got = Object.keys((me.votes || {})[key] || {}).length + 1;
        return r(SEED.learn, KV ? P + "multipaxos.pipeline.Pipeline.on_accepted (" + P + "multipaxos.log.Votes)"
          : P + "synod.learner.Learner.on_accepted (is_chosen_by)",
          (KV ? "slot " + m.n + ": " : m.v + ": ") + got + " of " + QUORUM + " acceptances in ballot " + m.b + (got >= QUORUM ? ": chosen" : ""));
      }
      return r(SEED.acceptRule, KV ? P + "multipaxos.acceptor.Acceptor.on_accept" : P + "synod.acceptor.Acceptor.on_accept",
        "node " + e[2] + " accepted " + (KV ? "slot " + m.n : m.v) + " in ballot " + m.b + " (its record is durable first)");
    }
    if (y === "rejected") {
      return r(SEED.duel, KV ? P + "multipaxos.election.Election.on_rejected (step down)" : P + "synod.proposer.Proposer.on_rejected (RetryPolicy.delay)",
        "ballot " + m.b + " lost to promised " + x.promised + (KV ? ": the proposer steps down" : ": the proposer backs off, then prepares above " + x.promised));
    }
    if (y === "heartbeat" || y === "heartbeatack") {
      return r(SEED.learners, P + "multipaxos.election.Election (heartbeats), " + P + "multipaxos.log.Log.learn_commit",
        y === "heartbeat" ? "leader " + e[2] + " (ballot " + m.b + ") tells commit " + x.commit + ", round " + x.round
          : "node " + e[2] + " acks round " + x.round + " of ballot " + m.b + " (accepted up to " + x.accepted + ")");
    }
    if (y === "prevote" || y === "prevotereply") {
      return r(SEED.duel, P + "multipaxos.election.Election (pre-vote)",
        y === "prevote" ? "node " + e[2] + " asks whether the others miss the leader too, before raising its ballot to " + m.b
          : "node " + e[2] + (x.granted ? " grants" : " refuses") + " the pre-vote for " + m.b);
    }
    if (!KV && (y === "chosen" || y === "learned" || y === "forward")) {
      if (y === "forward") {
        return r(SEED.any, P + "synod.node.SynodNode (forwards to the distinguished proposer)",
          "node " + e[2] + " hands its client's value " + m.v + " to the distinguished proposer " + e[3]);
      }
      return r(SEED.learners, P + "synod.node.SynodNode (Chosen / Learned), " + P + "synod.learner.Learner.on_chosen",
        y === "chosen" ? "node " + e[2] + " tells node " + e[3] + " that " + m.v + " is chosen"
          : "node " + e[2] + " acknowledges: it now knows the chosen value");
    }
    if (y === "forward" || y === "aborted") {
      return r(SEED.any, P + "multipaxos.pipeline.Pipeline.route, Pipeline.on_forward",
        y === "forward" ? "node " + e[2] + " forwards " + (x.cmds || "commands") + " to the leader" : "the old leader aborts what was forwarded to it");
    }
    if (y === "catchup" || y === "chosen") {
      return r(SEED.learners, P + "multipaxos.log.Log.catch_up / on_catch_up / on_chosen",
        y === "catchup" ? "node " + e[2] + " missed accepts and asks for chosen slots from " + x.first
          : "chosen slots " + (x.slots || []).slice(0, 8).join(", ") + " sent to a replica catching up (commit " + x.commit + ")");
    }
    if (y === "probe" || y === "probereply") {
      return r("Beyond the seed: a replica that lost its disk has forgotten its promises, so one that starts empty votes only once every member says it is empty too",
        P + "multipaxos.standing.Standings.on_probe / on_probe_reply",
        y === "probe" ? "node " + e[2] + " started empty: is the cluster new?"
          : "node " + e[2] + (x.empty ? " is empty" : " has history") + (x.ready ? ", ready to vote" : ""));
    }
    if (y.startsWith("snapshot")) {
      return r("Beyond the seed: a replica that needs slots the others compacted fetches a snapshot, in chunks, then the log after it",
        P + "multipaxos.transfer.Transfer.on_offer / on_request / on_chunk",
        y === "snapshotoffer" ? "those slots are compacted at node " + e[2] + ": fetch its snapshot of slot " + x.slot
          : y === "snapshotrequest" ? "node " + e[2] + " asks for snapshot " + x.slot + " from byte " + x.offset
          : "bytes " + x.offset + "+ of snapshot " + x.slot + " (of " + x.total + ")");
    }
    if (y.startsWith("readindex")) {
      return r("Read index: a linearizable read at a follower waits for a quorum's heartbeat acks", P + "multipaxos.reads",
        y === "readindex" ? "node " + e[2] + " asks the leader for a read index" : "read index " + x.index + (x.ok ? "" : " refused"));
    }
    if (y.startsWith("quorumread")) {
      return r(SEED.readLearner, P + "multipaxos.reads.Reads.evaluate_quorum_read",
        y === "quorumread" ? "node " + e[2] + " asks every acceptor what it applied and accepted"
          : "node " + e[2] + " applied " + x.applied + ", accepted up to " + x.accepted);
    }
    return r("", "", y);
  }

  function explain(idx) {
    const e = EV[idx], k = e[1], s = stateAt(idx - 1);
    const FN = "pnyx.sim.faults, pnyx.sim.network";
    if (typeof k === "string") return { rule: "", fn: "", why: k + " " + e[2] };
    if (k === K.send || k === K.deliver) return msgRule(e, s, k === K.deliver);
    if (k === K.drop) return { rule: SEED.fault, fn: FN, why: "the network drops " + MSGS[e[4]]?.y + " " + e[2] + "→" + e[3] };
    if (k === K.lost) return { rule: SEED.fault, fn: FN, why: (e[4] >= 0 ? MSGS[e[4]].y + " " : "a message ") + e[2] + "→" + e[3] + " is lost: " + e[6] };
    if (k === K.durable) return { rule: SEED.durable, fn: KV ? P + "multipaxos.effects.DurabilityGate" : P + "synod.node.SynodNode.persisted",
      why: "node " + e[2] + ": " + e[3] + " record(s) reach the disk; what waited on them may now leave" };
    if (k === K.propose) return { rule: SEED.phase1, fn: P + "synod.proposer.Proposer.propose", why: "a client asks node " + e[2] + " to propose " + e[3] };
    if (k === K.learn) return { rule: SEED.safety3, fn: P + "synod.learner.Learner.on_accepted / on_chosen", why: "node " + e[2] + " learns " + e[3] };
    if (k === K.chosen) return { rule: SEED.safety1, fn: P + "synod.learner.Learner.is_chosen_by (checked by pnyx.sim.invariants.Observer)",
      why: e[2] + " is chosen: a quorum (" + QUORUM + ") accepted it in one ballot" };
    const names = (e[2] || []).join(", ");
    const what = { crash: "node " + names + " crashes: everything not yet on disk is gone",
      restart: "node " + names + " restarts from its disk", partition: "nodes " + names + " are cut off from the rest",
      heal: "the partition heals", reboot: "a reboot is aimed at the leader (" + names + ")" }[KINDS[k]]
      || "node " + e[2] + " crashed and restarted at once from its disk";
    return { rule: SEED.fault, fn: FN, why: what };
  }

  // ----------------------------------------------------------------- drawing
  const stage = $("stage"), logSvg = $("log");
  // A phone gets a tall stage, so the text stays readable at its width.
  const PHONE = window.innerWidth < 600;
  const W = PHONE ? 400 : 640, H = PHONE ? 640 : 440, CX = W / 2, CY = H / 2 - 6;
  const CW = PHONE ? 140 : 172, CHARS = PHONE ? 24 : 30;
  stage.setAttribute("viewBox", "0 0 " + W + " " + H);
  const POS = {};
  IDS.forEach((id, j) => {
    const a = -Math.PI / 2 + (2 * Math.PI * j) / IDS.length;
    POS[id] = [CX + (W / 2 - CW / 2 - 6) * Math.cos(a), CY + (H / 2 - 58) * Math.sin(a)];
  });
  const COLORS = { prepare: "#2b6cb0", promise: "#3182ce", accept: "#c05621", accepted: "#dd6b20",
    rejected: "#c53030", chosen: "#2f855a", heartbeat: "#b794f4", heartbeatack: "#d6bcfa",
    prevote: "#805ad5", prevotereply: "#9f7aea", forward: "#319795", aborted: "#e53e3e",
    catchup: "#38a169", quorumread: "#d69e2e", quorumreadreply: "#ecc94b", readindex: "#718096",
    readindexreply: "#a0aec0", learned: "#2f855a" };
  const SHORT = { prepare: "1a", promise: "1b", accept: "2a", accepted: "2b", heartbeat: "hb",
    heartbeatack: "ack", prevote: "pv", prevotereply: "pv✓", rejected: "✗", forward: "fwd",
    quorumread: "qr", quorumreadreply: "qr✓", readindex: "ri", readindexreply: "ri✓", catchup: "cu",
    chosen: "ch", aborted: "ab" };

  function el(tag, attrs, text) {
    const x = document.createElementNS(SVGNS, tag);
    for (const a in attrs) x.setAttribute(a, attrs[a]);
    if (text !== undefined) x.textContent = text;
    return x;
  }

  function nodeLines(n, id) {
    if (!n.up) return ["down (crashed)"];
    if (KV) {
      return [n.role + (n.role === "follower" && n.leader ? " of " + n.leader : ""),
        "ballot " + (n.ballot || "—") + "  promised " + (n.promised || "—"),
        "commit " + n.commit + "  highest slot " + n.hi];
    }
    return [n.role || "acceptor", "promised " + (n.promised || "—"), "accepted " + (n.acc || "—")
      + (n.learned ? "  learned " + n.learned : "")];
  }

  let cur = null; // the state drawn: after EV[idx]
  let idx = -1, vt = EV.length ? EV[0][0] : 0, playing = false, selected = -1;

  function draw() {
    const s = cur, frag = document.createDocumentFragment();
    const cut = s.cut ? new Set(s.cut) : null;
    for (let a = 0; a < IDS.length; a++) for (let b = a + 1; b < IDS.length; b++) {
      const p = POS[IDS[a]], q = POS[IDS[b]];
      const broken = cut && cut.has(IDS[a]) !== cut.has(IDS[b]);
      frag.appendChild(el("line", { x1: p[0], y1: p[1], x2: q[0], y2: q[1], class: broken ? "link cut" : "link" }));
    }
    const e = idx >= 0 ? EV[idx] : null;
    const active = e ? (e[1] === K.send ? e[2] : e[1] === K.deliver ? e[3] : typeof e[2] === "number" ? e[2] : -1) : -1;
    for (const id of IDS) {
      const n = s.nodes[id], p = POS[id];
      const cls = ["node", n.up ? "" : "down", cut && cut.has(id) ? "cut" : "", KV && n.role === "leader" && n.up ? "leader" : "", id === active ? "active" : ""].join(" ");
      const g = el("g", { class: cls, "data-node": id, transform: "translate(" + (p[0] - CW / 2) + "," + (p[1] - 34) + ")" });
      g.appendChild(el("rect", { width: CW, height: 68, rx: 8 }));
      g.appendChild(el("text", { x: 8, y: 16, class: "name" }, "node " + id + (cut && cut.has(id) ? "  (partitioned)" : "")));
      nodeLines(n, id).forEach((t, j) => g.appendChild(el("text", { x: 8, y: 32 + 14 * j, class: n.up ? "" : "down-label" },
        t.length > CHARS ? t.slice(0, CHARS - 1) + "…" : t)));
      frag.appendChild(g);
    }
    const rows = Object.keys(s.flights);
    const labels = rows.length <= 40;
    for (const r of rows) {
      const f = EV[r], m = MSGS[f[4]];
      const p = POS[f[2]], q = POS[f[3]];
      if (!p || !q) continue;
      const end = f[5] >= 0 ? f[5] : Math.max(vt, f[0] + 1);
      let u = end > f[0] ? (vt - f[0]) / (end - f[0]) : 1;
      u = Math.max(0.04, Math.min(0.96, u));
      const x = p[0] + (q[0] - p[0]) * u, y = p[1] + (q[1] - p[1]) * u;
      const g = el("g", { class: "msg", "data-row": r });
      g.appendChild(el("title", {}, m.y + " " + f[2] + "→" + f[3] + (m.b ? " " + m.b : "") + (m.n ? " slot " + m.n : "") + (m.v ? " " + m.v : "")));
      g.appendChild(el("circle", { cx: x, cy: y, r: f[6] === 0 || f[6] === 3 ? 6 : 5, fill: COLORS[m.y] || "#555" }));
      if (labels) g.appendChild(el("text", { x: x + 7, y: y + 3 }, (SHORT[m.y] || m.y) + (m.b && !KV ? " " + m.b : "") + (m.n ? " s" + m.n : "")));
      frag.appendChild(g);
    }
    if (e && (e[1] === K.drop || e[1] === K.lost)) {
      const p = POS[e[2]], q = POS[e[3]];
      if (p && q) {
        const x = (p[0] + q[0]) / 2, y = (p[1] + q[1]) / 2;
        frag.appendChild(el("path", { d: `M${x - 7} ${y - 7}L${x + 7} ${y + 7}M${x + 7} ${y - 7}L${x - 7} ${y + 7}`, class: "gone" }));
      }
    }
    frag.appendChild(el("text", { x: 8, y: H - 8, class: "ev-label" }, e ? "#" + (META.start + idx + 1) + "  " + describe(idx) : "start"));
    stage.replaceChildren(frag);
    $("stat-sent").textContent = s.sent;
    $("stat-delivered").textContent = s.delivered;
    $("stat-lost").textContent = s.lost;
    $("stat-flying").textContent = rows.length;
    $("chosen").textContent = KV ? "commit " + Math.max(0, ...IDS.map((id) => s.nodes[id].commit)) : (s.chosen ?? "—");
    $("clock").textContent = "t = " + ms(vt) + " ms  ·  event " + (META.start + idx + 1) + " / " + (META.start + EV.length) + (META.total > META.start + EV.length ? " (of " + META.total + ")" : "");
    $("scrub").value = idx;
    if (KV) drawLog(s);
    drawList();
  }

  function drawLog(s) {
    let hi = 0;
    for (const id of IDS) hi = Math.max(hi, s.nodes[id].hi);
    const N = 40, lo = Math.max(1, hi - N + 1), cw = (W - 70) / N, rh = 22;
    const frag = document.createDocumentFragment();
    frag.appendChild(el("text", { x: 4, y: 12 }, "log slots " + lo + "–" + Math.max(lo, hi) + "   green chosen · amber accepted · grey no-op · dashed gap"));
    IDS.forEach((id, j) => {
      const n = s.nodes[id], y = 20 + j * rh;
      frag.appendChild(el("text", { x: 4, y: y + 14 }, "node " + id));
      for (let sl = lo; sl <= Math.max(lo, hi); sl++) {
        const a = n.slots[sl];
        const c = sl <= n.commit && a ? (a[1] === "no-op" ? "nc" : "c") : a ? (a[1] === "no-op" ? "n" : "a") : sl <= n.commit ? "c" : "gap";
        const r = el("rect", { x: 60 + (sl - lo) * cw, y: y + 2, width: cw - 1, height: rh - 6, class: "slot " + c });
        r.appendChild(el("title", {}, "node " + id + " slot " + sl + ": " + (a ? a[1] + " (ballot " + a[0] + ")" : sl <= n.commit ? "chosen" : "empty") + (sl <= n.commit ? ", chosen" : "")));
        frag.appendChild(r);
      }
    });
    logSvg.setAttribute("viewBox", "0 0 " + W + " " + (24 + IDS.length * rh));
    logSvg.replaceChildren(frag);
  }

  function describe(i) {
    const e = EV[i], k = e[1];
    if (typeof k === "string") return k + " " + e[2];
    if (k === K.send || k === K.deliver || k === K.drop || k === K.lost) {
      const m = e[4] >= 0 ? MSGS[e[4]] : { y: "message" };
      const body = m.y + (m.b ? " " + m.b : "") + (m.n ? " slot " + m.n : "") + (m.v ? " " + m.v : "")
        + (m.x && m.x.commit !== undefined && m.y !== "accept" ? " commit " + m.x.commit : "");
      if (k === K.send) return e[2] + " → " + e[3] + "  " + body;
      if (k === K.deliver) return e[3] + " ← " + e[2] + "  " + body;
      return "✗ " + e[2] + " → " + e[3] + " " + body + (k === K.lost ? " lost: " + e[6] : " dropped");
    }
    if (k === K.durable) return "node " + e[2] + " durable (" + e[3] + " records)";
    if (k === K.propose) return "node " + e[2] + " asked to propose " + e[3];
    if (k === K.learn) return "node " + e[2] + " learns " + e[3];
    if (k === K.chosen) return "CHOSEN " + e[2];
    if (k === K.rebooted) return "node " + e[2] + " rebooted";
    return KINDS[k].toUpperCase() + " " + (e[2] || []).join(", ");
  }

  const list = $("events");
  function drawList() {
    const lo = Math.max(0, idx - 8), hi = Math.min(EV.length, lo + 24);
    const frag = document.createDocumentFragment();
    for (let i = lo; i < hi; i++) {
      const li = document.createElement("li");
      li.dataset.i = i;
      const k = EV[i][1];
      li.className = (i === idx ? "now" : i > idx ? "future" : "") + (k >= K.crash ? " fault" : "");
      li.textContent = ms(EV[i][0]).padStart(10) + "  " + describe(i);
      frag.appendChild(li);
    }
    list.replaceChildren(frag);
  }

  function showExplain(i) {
    selected = i;
    const box = $("explain");
    if (i < 0) return;
    const x = explain(i);
    box.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = "#" + (META.start + i + 1) + " at " + ms(EV[i][0]) + " ms: " + describe(i);
    box.appendChild(h);
    const add = (cls, label, text, code) => {
      if (!text) return;
      const p = document.createElement("p");
      p.className = cls;
      const b = document.createElement("b"); b.textContent = label; p.appendChild(b);
      const t = document.createElement(code ? "code" : "span"); t.textContent = text; p.appendChild(t);
      box.appendChild(p);
    };
    add("why", "", x.why);
    add("rule", "seed: ", x.rule);
    add("fn", "implemented by ", x.fn, true);
    box.dataset.event = i;
  }

  // ---------------------------------------------------------------- control
  function seek(i) {
    i = Math.max(-1, Math.min(EV.length - 1, i));
    cur = stateAt(i);
    idx = i;
    vt = i >= 0 ? EV[i][0] : (EV.length ? EV[0][0] : 0);
    draw();
  }
  function stepTo(i) {
    if (i === idx + 1 && i < EV.length) { apply(cur, EV[i], i); idx = i; vt = EV[i][0]; draw(); }
    else seek(i);
  }
  function firstAfter(t) { // the index of the last event at or before t
    let lo = -1, hi = EV.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (EV[mid][0] <= t) lo = mid; else hi = mid - 1; }
    return lo;
  }

  const duration = EV.length ? EV[EV.length - 1][0] - EV[0][0] : 0;
  const SPEEDS = [0.05, 0.2, 1, 5, 20, 100, 500, 2000]; // virtual ms per real second
  const speedSel = $("speed");
  SPEEDS.forEach((v) => { const o = document.createElement("option"); o.value = v; o.textContent = v + " ms/s"; speedSel.appendChild(o); });
  let best = SPEEDS[0];
  for (const v of SPEEDS) if (v * 1000 * 40 <= duration) best = v; // about 40 s for the whole run
  speedSel.value = best;

  let last = 0;
  function frame(now) {
    if (!playing) return;
    const dt = Math.min(100, now - (last || now));
    last = now;
    vt += dt * Number(speedSel.value); // ms of real time * virtual ms/s = virtual µs
    let n = 0;
    while (idx + 1 < EV.length && EV[idx + 1][0] <= vt && n < 5000) { apply(cur, EV[idx + 1], idx + 1); idx++; n++; }
    if (n === 5000) vt = EV[idx][0];
    if (idx + 1 >= EV.length) { playing = false; $("b-play").textContent = "▶ play"; }
    draw();
    if (playing) requestAnimationFrame(frame);
  }
  function play(on) {
    playing = on === undefined ? !playing : on;
    $("b-play").textContent = playing ? "‖ pause" : "▶ play";
    if (playing) { if (idx + 1 >= EV.length) seek(-1); last = 0; requestAnimationFrame(frame); }
  }

  $("b-play").onclick = () => play();
  $("b-back").onclick = () => { play(false); seek(idx - 1); };
  $("b-fwd").onclick = () => { play(false); stepTo(idx + 1); };
  $("b-start").onclick = () => { play(false); seek(-1); };
  $("b-end").onclick = () => { play(false); seek(EV.length - 1); };
  $("jump").onchange = () => { play(false); const v = Number($("jump").value); if (isFinite(v)) { seek(firstAfter(v * 1000)); vt = Math.max(vt, v * 1000); draw(); } };
  const scrub = $("scrub");
  scrub.max = EV.length - 1;
  scrub.oninput = () => { play(false); seek(Number(scrub.value)); };
  list.onclick = (ev) => { const li = ev.target.closest("li"); if (li) { play(false); const i = Number(li.dataset.i); seek(i); showExplain(i); } };
  stage.onclick = (ev) => {
    const g = ev.target.closest(".msg");
    if (g) { showExplain(Number(g.dataset.row)); return; }
    if (idx >= 0) showExplain(idx);
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" && ev.target.type === "number") { if (ev.key === "Escape") ev.target.blur(); return; }
    const step = ev.shiftKey ? 10 : 1;
    const speeds = Array.from(speedSel.options);
    if (ev.key === " " || ev.key === "k") { play(); }
    else if (ev.key === "ArrowRight" || ev.key === "l") { play(false); if (step === 1) stepTo(idx + 1); else seek(idx + step); showExplain(idx); }
    else if (ev.key === "ArrowLeft" || ev.key === "h") { play(false); seek(idx - step); showExplain(idx); }
    else if (ev.key === "Home") { play(false); seek(-1); }
    else if (ev.key === "End") { play(false); seek(EV.length - 1); }
    else if (ev.key === "+" || ev.key === "=") { speedSel.selectedIndex = Math.min(speeds.length - 1, speedSel.selectedIndex + 1); }
    else if (ev.key === "-") { speedSel.selectedIndex = Math.max(0, speedSel.selectedIndex - 1); }
    else if (ev.key === "j") { $("jump").focus(); }
    else return;
    ev.preventDefault();
  });

  // ----------------------------------------------------------------- start
  $("summary").textContent = META.summary || "";
  if (!META.summary) $("summary-box").hidden = true;
  if (KV) { logSvg.hidden = false; }
  if (META.total > META.start + EV.length || META.start > 0) {
    const b = $("banner");
    b.hidden = false;
    b.textContent = "This page shows events " + (META.start + 1) + "–" + (META.start + EV.length) + " of " + META.total
      + " (at most " + META.limit + " per page). For another part: pnyx replay TRACE --html out.html --from N.";
  }
  seek(-1);
  window.pnyxReplay = { seek, stepTo, explain, stateAt, get index() { return idx; }, events: EV.length, ready: true };
  document.body.dataset.ready = "1";
})();
