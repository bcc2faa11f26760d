// The browser end of tests/livekit_browser.rs, run by headless Chromium.
//
// Query string: url (ws://127.0.0.1:PORT), token, tone (Hz we publish, default
// 600), listen (ms to measure the caller's audio, default 5000), hold (ms to stay
// after that, default 1000), want (Hz looked for in the caller's audio, default
// 1000), lklog (livekit-client log level, default "info").
//
// Steps, each bounded, each failure recorded and the later steps still tried:
//   1. connect with livekit-client (the real SDK, its UMD build);
//   2. find the SIP participant (participant.kind == ParticipantKind.SIP);
//   3. publish a WebAudio oscillator (tone Hz) as the microphone track;
//   4. wait for the SIP participant's audio track (auto-subscribed), attach it to
//      an <audio> element (Chromium feeds a remote stream to WebAudio only when a
//      media element plays it too) and to an AnalyserNode, and measure for
//      `listen` ms: RMS and the spectrum's peak, and how many frames peak at `want`;
//   5. after `hold` ms more (our tone still playing), WebRTC stats, disconnect.
// The report is POSTed as JSON to /result on the runner's HTTP server, which also
// gets every console line on /log (the runner prints them when a test fails).
"use strict";

const q = new URLSearchParams(location.search);
const num = (name, dflt) => {
  const v = Number(q.get(name));
  return Number.isFinite(v) && v > 0 ? v : dflt;
};
const cfg = {
  url: q.get("url") || "",
  token: q.get("token") || "",
  toneHz: num("tone", 600),
  wantHz: num("want", 1000),
  listenMs: num("listen", 5000),
  holdMs: num("hold", 1000),
  lklog: q.get("lklog") || "info",
  // v0=1: the older signal path (/rtc, publisher and subscriber
  // PeerConnections), as SDKs without single-PC support use it.
  v0: q.get("v0") === "1",
};

const R = {
  sdk_version: "",
  connected: false,
  connect_ms: null,
  participants: [],
  sip: null,
  published: false,
  published_sid: "",
  audio_context: null,
  subscribed: false,
  // livekit-client's own recoveries: a signal resume, or a full reconnect
  // (new PeerConnection, new participant sid) after a negotiation failure.
  reconnects: [],
  heard: null,
  inbound: null,
  outbound: null,
  errors: [],
};

const t0 = performance.now();
const since = () => Math.round(performance.now() - t0);
function log(...args) {
  console.log("[page +" + since() + "ms]", ...args);
}
function fail(step, e) {
  const msg = step + ": " + (e && e.stack ? e.stack : String(e));
  R.errors.push(msg);
  console.error("[page] " + msg);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(what + ": no result within " + ms + " ms")), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}
// Poll `get` every 50 ms until it returns something truthy (at most `ms`).
async function waitFor(get, ms, what) {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = get();
    if (v) return v;
    if (performance.now() > deadline) throw new Error(what + ": not within " + ms + " ms");
    await sleep(50);
  }
}

function describe(p) {
  return {
    identity: p.identity,
    name: p.name,
    kind: p.kind,
    is_agent: p.isAgent,
    attributes: Object.assign({}, p.attributes),
    tracks: [...p.trackPublications.values()].map((t) => ({
      sid: t.trackSid,
      kind: t.kind,
      source: t.source,
      mime: t.mimeType,
      subscribed: t.isSubscribed,
    })),
  };
}

// inbound-rtp / outbound-rtp and the codec of a track's stats report.
async function rtpStats(track, type) {
  if (!track || !track.getRTCStatsReport) return null;
  const report = await withTimeout(track.getRTCStatsReport(), 3000, "stats");
  if (!report) return null;
  let out = null;
  const codecs = {};
  report.forEach((s) => {
    if (s.type === "codec") codecs[s.id] = s.mimeType + "/" + s.clockRate;
    if (s.type === type && s.kind === "audio") out = Object.assign({}, s);
  });
  if (!out) return null;
  const keep = [
    "packetsReceived", "packetsLost", "bytesReceived", "jitter", "audioLevel",
    "totalSamplesReceived", "concealedSamples", "packetsSent", "bytesSent",
    "totalAudioEnergy", "ssrc", "codecId",
  ];
  const s = {};
  for (const k of keep) if (out[k] !== undefined) s[k] = out[k];
  s.codec = codecs[out.codecId] || "";
  // The nominated candidate pair: which of our addresses talked to the server.
  const cands = {};
  let pair = null;
  report.forEach((x) => {
    if (x.type === "local-candidate" || x.type === "remote-candidate") {
      cands[x.id] = x.candidateType + " " + x.protocol + " " + x.address + ":" + x.port;
    }
    if (x.type === "candidate-pair" && x.nominated && x.state === "succeeded") pair = x;
  });
  if (pair) s.pair = cands[pair.localCandidateId] + " -> " + cands[pair.remoteCandidateId];
  return s;
}

// Measure `stream` for `ms`: per 100 ms frame, RMS of the waveform and the
// spectrum's loudest bin.
async function listen(ctx, stream, ms, wantHz) {
  const src = ctx.createMediaStreamSource(stream);
  const an = ctx.createAnalyser();
  an.fftSize = 4096;
  an.smoothingTimeConstant = 0;
  src.connect(an);
  const wave = new Float32Array(an.fftSize);
  const spec = new Float32Array(an.frequencyBinCount);
  const binHz = ctx.sampleRate / an.fftSize;
  const h = { frames: 0, loud_frames: 0, tone_frames: 0, max_rms: 0, mean_rms: 0, peaks_hz: [], bin_hz: binHz };
  let sum = 0;
  const end = performance.now() + ms;
  while (performance.now() < end) {
    await sleep(100);
    an.getFloatTimeDomainData(wave);
    an.getFloatFrequencyData(spec);
    let e = 0;
    for (const x of wave) e += x * x;
    const rms = Math.sqrt(e / wave.length);
    let best = 1;
    for (let i = 2; i < spec.length; i++) if (spec[i] > spec[best]) best = i;
    const peak = best * binHz;
    h.frames += 1;
    sum += rms;
    h.max_rms = Math.max(h.max_rms, rms);
    if (rms > 0.003) h.loud_frames += 1;
    if (rms > 0.003 && Math.abs(peak - wantHz) <= 2 * binHz) h.tone_frames += 1;
    if (h.peaks_hz.length < 80) h.peaks_hz.push(Math.round(peak));
  }
  h.mean_rms = h.frames ? sum / h.frames : 0;
  src.disconnect();
  return h;
}

async function post(path, body) {
  await fetch(path, { method: "POST", body: JSON.stringify(body) });
}

async function main() {
  const LK = window.LivekitClient;
  if (!LK) throw new Error("livekit-client's UMD build did not load (window.LivekitClient)");
  R.sdk_version = LK.version;
  LK.setLogLevel(cfg.lklog);
  log("livekit-client", LK.version, "connecting to", cfg.url);
  const room = new LK.Room({
    adaptiveStream: false,
    dynacast: false,
    singlePeerConnection: !cfg.v0,
  });
  room.on(LK.RoomEvent.Disconnected, (reason) => log("room disconnected, reason", reason));
  room.on(LK.RoomEvent.SignalReconnecting, () => R.reconnects.push("signal resume at +" + since() + " ms"));
  room.on(LK.RoomEvent.Reconnecting, () => R.reconnects.push("full reconnect at +" + since() + " ms"));
  room.on(LK.RoomEvent.ParticipantConnected, (p) => log("participant connected", p.identity, "kind", p.kind));
  room.on(LK.RoomEvent.TrackSubscribed, (t, pub, p) => log("subscribed", t.kind, pub.trackSid, "of", p.identity));
  room.on(LK.RoomEvent.TrackSubscriptionFailed, (sid, p, err) => log("subscription failed", sid, p && p.identity, String(err)));

  // 1. connect
  const c0 = performance.now();
  try {
    await withTimeout(room.connect(cfg.url, cfg.token, { autoSubscribe: true }), 30000, "connect");
    R.connected = true;
    R.connect_ms = Math.round(performance.now() - c0);
    log("connected in", R.connect_ms, "ms, room", room.name, "as", room.localParticipant.identity);
  } catch (e) {
    fail("connect", e);
    return;
  }

  // 2. the SIP participant
  let sip = null;
  try {
    sip = await waitFor(
      () => [...room.remoteParticipants.values()].find((p) => p.kind === LK.ParticipantKind.SIP),
      10000,
      "a participant of kind SIP",
    );
    R.sip = describe(sip);
  } catch (e) {
    fail("sip participant", e);
  }

  // 3. publish a tone
  let ctx = null;
  let localTrack = null;
  try {
    ctx = new AudioContext();
    await withTimeout(ctx.resume(), 3000, "AudioContext.resume");
    R.audio_context = { state: ctx.state, rate: ctx.sampleRate };
    const osc = ctx.createOscillator();
    osc.frequency.value = cfg.toneHz;
    const gain = ctx.createGain();
    gain.gain.value = 0.5;
    const dest = ctx.createMediaStreamDestination();
    osc.connect(gain).connect(dest);
    osc.start();
    const pub = await withTimeout(
      room.localParticipant.publishTrack(dest.stream.getAudioTracks()[0], {
        name: "tone",
        source: LK.Track.Source.Microphone,
      }),
      15000,
      "publishTrack",
    );
    localTrack = pub.track;
    R.published = true;
    R.published_sid = pub.trackSid;
    log("published", cfg.toneHz, "Hz as", pub.trackSid);
  } catch (e) {
    fail("publish", e);
  }

  // 4. hear the caller
  let remote = null;
  if (sip && ctx) {
    try {
      remote = await waitFor(
        () => {
          for (const p of sip.trackPublications.values()) {
            if (p.kind === LK.Track.Kind.Audio && p.track && p.track.mediaStreamTrack) return p.track;
          }
          return null;
        },
        10000,
        "the SIP participant's audio track",
      );
      R.subscribed = true;
      const el = remote.attach();
      document.body.appendChild(el);
      R.heard = await listen(ctx, new MediaStream([remote.mediaStreamTrack]), cfg.listenMs, cfg.wantHz);
      log("heard", JSON.stringify(R.heard));
    } catch (e) {
      fail("listen", e);
    }
  }
  if (sip) R.sip = describe(sip);
  R.participants = [...room.remoteParticipants.values()].map(describe);

  // 5. let the caller hear us a little longer, then stats and leave
  await sleep(remote ? cfg.holdMs : cfg.listenMs + cfg.holdMs);
  try {
    R.inbound = await rtpStats(remote, "inbound-rtp");
    R.outbound = await rtpStats(localTrack, "outbound-rtp");
  } catch (e) {
    fail("stats", e);
  }
  try {
    await withTimeout(room.disconnect(), 5000, "disconnect");
  } catch (e) {
    fail("disconnect", e);
  }
}

main()
  .catch((e) => fail("main", e))
  .finally(() => {
    R.total_ms = since();
    document.title = "switchboard browser test: done";
    return post("/result", R).catch((e) => console.error("[page] POST /result: " + e));
  });
