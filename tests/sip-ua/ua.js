#!/usr/bin/env node
// Many JsSIP user agents in one node process, driven by sluice's Rust integration
// tests (tests/support/jssip.rs) with JSON lines: commands on stdin, events on stdout,
// logs on stderr. JsSIP's own debug log goes to stderr when SIP_UA_DEBUG is set
// (SIP_UA_DEBUG=1 for all of JsSIP, or a `debug` pattern such as `JsSIP:Transport`).
//
// The WebRTC side of a call is a stub (a fake RTCPeerConnection with canned SDP, a
// fake MediaStream): JsSIP's signalling and transaction layers are the real ones.
// The WebSocket is the npm `ws` package behind JsSIP's Socket interface, offering
// subprotocol `sip` as a browser does (lib/WebSocketInterface.js, copied).
//
// Commands (one JSON object a line):
//   {"cmd":"ua","ua":"p1","url":"ws://host:port/path","uri":"sip:p1@example.invalid",
//    "register":true, "trace":true|"full", "answer":false, "config":{...JsSIP UA config}}
//   {"cmd":"call","ua":"p1","call":"c1","target":"sip:queue@example.invalid",
//    "headers":["X-A: b"], "options":{...JsSIP call options}}
//   {"cmd":"cancel","call":"c1"}            terminate() of a call not yet established
//   {"cmd":"hangup","call":"c1"}            terminate(): CANCEL before the answer, BYE after
//   {"cmd":"reinvite","call":"c1","hold":false}  renegotiate() (hold(): a hold re-INVITE)
//   {"cmd":"stop","ua":"p1"}                ua.stop(): un-REGISTER, end calls, close
//   {"cmd":"drop","ua":"p1","abrupt":false} close the WebSocket under JsSIP (no SIP
//                                           goodbye, no reconnect); abrupt: no close frame
//   {"cmd":"quit"}                          stop every UA, then exit
// Every command may carry "id"; an "error" event for it repeats it.
//
// Events: {"t": ms since start (monotonic), "event": NAME, "ua": ..., ...}; a call's
// events carry "call" (the test's name) and "call_id" (its SIP Call-ID).
//   ready {jssip, ws}; connected; disconnected {error, code, reason}; socket_error {message};
//   registered; unregistered {cause}; registration_failed {cause, status};
//   sending {call, call_id}; progress {call, call_id, status} (100 from the wire, others
//   from JsSIP); accepted {status}; confirmed; failed {originator, cause, status, reason,
//   retry_after, sip_reason} (once, and no `ended` after it); ended {originator, cause};
//   reinvited {ok, hold}; hold / unhold {originator};
//   incoming {call, call_id, from}; sip_in / sip_out {first, call_id, cseq[, raw]} when
//   traced; error {message, cmd, id}.
'use strict';

const { performance } = require('perf_hooks');
const readline = require('readline');

if (process.env.SIP_UA_DEBUG)
{
  const pattern = process.env.SIP_UA_DEBUG === '1' ? 'JsSIP:*' : process.env.SIP_UA_DEBUG;

  require('debug').enable(pattern);
}

const WebSocket = require('ws');
const JsSIP = require('jssip');

function emit(event, fields)
{
  const line = JSON.stringify({ t: Math.round(performance.now() * 1000) / 1000, event, ...fields });

  process.stdout.write(`${line}\n`);
}

function log(...args)
{
  process.stderr.write(`[ua.js] ${args.join(' ')}\n`);
}

if (!process.env.SIP_UA_DEBUG)
{
  JsSIP.debug.disable();
}

// ---- the media stub --------------------------------------------------------------

let sdpVersion = 1;

function cannedSdp()
{
  sdpVersion += 1;

  return [
    'v=0',
    `o=- 4611731400430051336 ${sdpVersion} IN IP4 127.0.0.1`,
    's=-',
    't=0 0',
    'a=group:BUNDLE 0',
    'a=msid-semantic: WMS stub',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111 0',
    'c=IN IP4 127.0.0.1',
    'a=rtcp:9 IN IP4 0.0.0.0',
    'a=ice-ufrag:stub',
    'a=ice-pwd:stubstubstubstubstubstub',
    'a=fingerprint:sha-256 ' +
      'AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89',
    'a=setup:actpass',
    'a=mid:0',
    'a=sendrecv',
    'a=rtcp-mux',
    'a=rtpmap:111 opus/48000/2',
    'a=rtpmap:0 PCMU/8000',
    'a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host',
    ''
  ].join('\r\n');
}

class FakeTrack
{
  constructor(kind)
  {
    this.kind = kind;
    this.enabled = true;
    this.readyState = 'live';
  }

  stop() { this.readyState = 'ended'; }
}

class FakeMediaStream
{
  constructor(tracks) { this._tracks = tracks || [ new FakeTrack('audio') ]; }

  getTracks() { return this._tracks.slice(); }

  getAudioTracks() { return this._tracks.filter((t) => t.kind === 'audio'); }

  getVideoTracks() { return this._tracks.filter((t) => t.kind === 'video'); }
}

class FakeRTCSessionDescription
{
  constructor({ type, sdp } = {}) { this.type = type; this.sdp = sdp; }
}

class FakeRTCPeerConnection
{
  constructor()
  {
    this.signalingState = 'stable';
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'connected';
    this.connectionState = 'connected';
    this.localDescription = null;
    this.remoteDescription = null;
    this.onicecandidate = null;
    this._listeners = {};
    this._senders = [];
  }

  addEventListener(name, fn) { (this._listeners[name] = this._listeners[name] || []).push(fn); }

  removeEventListener(name, fn)
  {
    this._listeners[name] = (this._listeners[name] || []).filter((f) => f !== fn);
  }

  _fire(name, event)
  {
    for (const fn of this._listeners[name] || []) { fn(event); }
    if (typeof this[`on${name}`] === 'function') { this[`on${name}`](event); }
  }

  addTrack(track) { const s = { track, dtmf: null }; this._senders.push(s); return s; }

  getSenders() { return this._senders.slice(); }

  getReceivers() { return []; }

  getLocalStreams() { return []; }

  getRemoteStreams() { return []; }

  createOffer() { return Promise.resolve(new FakeRTCSessionDescription({ type: 'offer', sdp: cannedSdp() })); }

  createAnswer() { return Promise.resolve(new FakeRTCSessionDescription({ type: 'answer', sdp: cannedSdp() })); }

  setLocalDescription(desc)
  {
    this.localDescription = new FakeRTCSessionDescription(desc);
    this.signalingState = desc.type === 'offer' ? 'have-local-offer' : 'stable';
    // Gathering is over at once: a null candidate, so JsSIP never waits for ICE.
    setImmediate(() => this._fire('icecandidate', { candidate: null }));

    return Promise.resolve();
  }

  setRemoteDescription(desc)
  {
    this.remoteDescription = new FakeRTCSessionDescription(desc);
    this.signalingState = desc.type === 'offer' ? 'have-remote-offer' : 'stable';

    return Promise.resolve();
  }

  addIceCandidate() { return Promise.resolve(); }

  getStats() { return Promise.resolve(new Map()); }

  close() { this.signalingState = 'closed'; this.iceConnectionState = 'closed'; }
}

globalThis.window = globalThis.window || globalThis;
globalThis.RTCPeerConnection = FakeRTCPeerConnection;
globalThis.RTCSessionDescription = FakeRTCSessionDescription;
globalThis.MediaStream = FakeMediaStream;
if (!globalThis.navigator) { globalThis.navigator = {}; }
if (!globalThis.navigator.mediaDevices)
{
  Object.defineProperty(globalThis.navigator, 'mediaDevices', {
    value        : { getUserMedia: () => Promise.resolve(new FakeMediaStream()) },
    configurable : true
  });
}

// ---- the socket: JsSIP's WebSocketInterface over `ws` ----------------------------

// What a traced message is: its start line, Call-ID and CSeq.
function summary(text)
{
  const str = typeof text === 'string' ? text : Buffer.from(text).toString('utf8');
  const lines = str.split('\r\n');
  const header = (long, short) =>
  {
    for (const line of lines)
    {
      if (line === '') { break; }
      const colon = line.indexOf(':');

      if (colon < 0) { continue; }
      const name = line.slice(0, colon).trim().toLowerCase();

      if (name === long || name === short) { return line.slice(colon + 1).trim(); }
    }

    return null;
  };

  return { str, first: lines[0], call_id: header('call-id', 'i'), cseq: header('cseq', null) };
}

class WsSocket
{
  constructor(url, agent)
  {
    const parsed = JsSIP.Grammar.parse(url, 'absoluteURI');

    if (parsed === -1 || (parsed.scheme !== 'wss' && parsed.scheme !== 'ws'))
    {
      throw new TypeError(`Invalid argument: ${url}`);
    }
    this._url = url;
    this._sip_uri = `sip:${parsed.host}${parsed.port ? `:${parsed.port}` : ''};transport=ws`;
    this._via_transport = parsed.scheme.toUpperCase();
    this._ws = null;
    this._agent = agent;
    // Dropped by the test: the socket stays closed (JsSIP's reconnects do nothing).
    this.dead = false;
  }

  get via_transport() { return this._via_transport; }

  set via_transport(value) { this._via_transport = value.toUpperCase(); }

  get sip_uri() { return this._sip_uri; }

  get url() { return this._url; }

  connect()
  {
    if (this.dead || this.isConnected() || this.isConnecting()) { return; }
    if (this._ws) { this.disconnect(); }
    try
    {
      this._ws = new WebSocket(this._url, 'sip');
      this._ws.binaryType = 'arraybuffer';
      this._ws.onopen = this._onOpen.bind(this);
      this._ws.onclose = this._onClose.bind(this);
      this._ws.onmessage = this._onMessage.bind(this);
      this._ws.onerror = this._onError.bind(this);
    }
    catch (e)
    {
      this._onError(e);
    }
  }

  disconnect()
  {
    if (this._ws)
    {
      this._ws.onopen = () => {};
      this._ws.onclose = () => {};
      this._ws.onmessage = () => {};
      this._ws.onerror = () => {};
      this._ws.close();
      this._ws = null;
    }
  }

  // Closes the WebSocket under JsSIP without any SIP, and keeps it closed.
  drop(abrupt)
  {
    this.dead = true;
    if (!this._ws) { return; }
    if (abrupt) { this._ws.terminate(); }
    else { this._ws.close(1000); }
  }

  send(message)
  {
    if (this.isConnected())
    {
      this._agent.traced('sip_out', message);
      this._ws.send(message);

      return true;
    }

    return false;
  }

  isConnected() { return Boolean(this._ws) && this._ws.readyState === this._ws.OPEN; }

  isConnecting() { return Boolean(this._ws) && this._ws.readyState === this._ws.CONNECTING; }

  _onOpen() { this.onconnect(); }

  _onClose({ wasClean, code, reason })
  {
    this.ondisconnect(!wasClean, code, reason);
  }

  _onMessage({ data })
  {
    this._agent.received(data);
    this.ondata(data);
  }

  _onError(e)
  {
    this._agent.emit('socket_error', { message: e && e.message ? e.message : String(e) });
  }
}

// ---- user agents and calls -------------------------------------------------------

const agents = new Map(); // test name -> Agent
const calls = new Map(); // test call name -> Call

function statusOf(message)
{
  return message && typeof message.status_code === 'number' ? message.status_code : null;
}

function headerOf(message, name)
{
  if (!message || typeof message.getHeader !== 'function') { return null; }
  const value = message.getHeader(name);

  return value === undefined ? null : value;
}

class Agent
{
  constructor(spec)
  {
    this.name = spec.ua;
    this.trace = spec.trace || false;
    this.autoAnswer = Boolean(spec.answer);
    this.socket = new WsSocket(spec.url, this);
    // Call-ID -> the call placed from this UA (to report a 100 Trying JsSIP swallows).
    this.byCallId = new Map();
    this.ua = new JsSIP.UA({
      sockets                          : [ this.socket ],
      uri                              : spec.uri,
      register                         : Boolean(spec.register),
      connection_recovery_min_interval : 1,
      connection_recovery_max_interval : 4,
      ...(spec.config || {})
    });
    this.ua.on('connected', () => this.emit('connected', {}));
    this.ua.on('disconnected', (e) => this.emit('disconnected', {
      error  : Boolean(e && e.error),
      code   : e && e.code !== undefined ? e.code : null,
      reason : e && e.reason !== undefined ? String(e.reason) : null
    }));
    this.ua.on('registered', () => this.emit('registered', {}));
    this.ua.on('unregistered', (e) => this.emit('unregistered', { cause: (e && e.cause) || null }));
    this.ua.on('registrationFailed', (e) => this.emit('registration_failed', {
      cause  : e.cause || null,
      status : statusOf(e.response)
    }));
    this.ua.on('newRTCSession', (e) => { if (e.originator === 'remote') { this.incoming(e.session); } });
    this.ua.start();
  }

  emit(event, fields) { emit(event, { ua: this.name, ...fields }); }

  traced(event, data, parsed)
  {
    if (!this.trace) { return; }
    const s = parsed || summary(data);
    const fields = { first: s.first, call_id: s.call_id, cseq: s.cseq };

    if (this.trace === 'full') { fields.raw = s.str; }
    this.emit(event, fields);
  }

  received(data)
  {
    const s = summary(data);

    this.traced('sip_in', data, s);

    // JsSIP emits no event for a 100 Trying: report it from the wire.
    if (s.first.startsWith('SIP/2.0 100') && s.cseq && / INVITE$/i.test(s.cseq))
    {
      const call = this.byCallId.get(s.call_id);

      if (call && call.initialCseq === parseInt(s.cseq, 10) && !call.over)
      {
        call.emit('progress', { status: 100 });
      }
    }
  }

  incoming(session)
  {
    const name = `in-${this.name}-${session._request.call_id}`;
    const call = new Call(name, this, session);

    calls.set(name, call);
    call.emit('incoming', { from: session.remote_identity.uri.toString() });
    if (this.autoAnswer)
    {
      session.answer({ mediaConstraints: { audio: true, video: false } });
    }
  }
}

class Call
{
  constructor(name, agent, session)
  {
    this.name = name;
    this.agent = agent;
    this.session = session;
    // JsSIP has no public getter for the INVITE: _request is set by connect().
    const request = session._request;

    this.callId = request ? request.call_id : null;
    this.initialCseq = request ? request.cseq : null;
    this.over = false;
    if (this.callId) { agent.byCallId.set(this.callId, this); }
    session.on('sending', (e) =>
    {
      this.callId = e.request.call_id;
      this.initialCseq = e.request.cseq;
      agent.byCallId.set(this.callId, this);
      this.emit('sending', {});
    });
    session.on('progress', (e) => this.emit('progress', { originator: e.originator, status: statusOf(e.response) }));
    session.on('accepted', (e) => this.emit('accepted', { originator: e.originator, status: statusOf(e.response) }));
    session.on('confirmed', (e) => this.emit('confirmed', { originator: e.originator }));
    session.on('hold', (e) => this.emit('hold', { originator: e.originator }));
    session.on('unhold', (e) => this.emit('unhold', { originator: e.originator }));
    // JsSIP can emit `failed` twice for one call (a 2xx without SDP or Contact): the
    // first is the one that counts.
    session.on('failed', (e) =>
    {
      if (this.over) { return; }
      this.over = true;
      this.emit('failed', {
        originator  : e.originator,
        cause       : e.cause || null,
        status      : statusOf(e.message),
        reason      : e.message && e.message.reason_phrase !== undefined ? e.message.reason_phrase : null,
        retry_after : headerOf(e.message, 'Retry-After'),
        sip_reason  : headerOf(e.message, 'Reason')
      });
    });
    session.on('ended', (e) =>
    {
      if (this.over) { return; }
      this.over = true;
      this.emit('ended', { originator: e.originator, cause: e.cause || null });
    });
  }

  emit(event, fields) { this.agent.emit(event, { call: this.name, call_id: this.callId, ...fields }); }
}

// ---- commands --------------------------------------------------------------------

function need(map, key, what)
{
  const v = map.get(key);

  if (!v) { throw new Error(`no ${what} named ${JSON.stringify(key)}`); }

  return v;
}

function run(cmd)
{
  switch (cmd.cmd)
  {
    case 'ua':
    {
      if (agents.has(cmd.ua)) { throw new Error(`UA ${cmd.ua} exists`); }
      agents.set(cmd.ua, new Agent(cmd));
      break;
    }
    case 'call':
    {
      if (calls.has(cmd.call)) { throw new Error(`call ${cmd.call} exists`); }
      const agent = need(agents, cmd.ua, 'UA');
      const session = agent.ua.call(cmd.target, {
        mediaConstraints : { audio: true, video: false },
        extraHeaders     : cmd.headers || [],
        ...(cmd.options || {})
      });

      calls.set(cmd.call, new Call(cmd.call, agent, session));
      break;
    }
    case 'cancel':
    {
      const call = need(calls, cmd.call, 'call');

      if (call.session.isEstablished() || call.session.isEnded())
      {
        throw new Error(`call ${cmd.call} is not in its early state: use hangup`);
      }
      call.session.terminate(cmd.status_code ? { status_code: cmd.status_code } : {});
      break;
    }
    case 'hangup':
    {
      need(calls, cmd.call, 'call').session.terminate();
      break;
    }
    case 'reinvite':
    {
      const call = need(calls, cmd.call, 'call');
      const done = () => call.emit('reinvited', { ok: true, hold: Boolean(cmd.hold) });
      const started = cmd.hold ? call.session.hold({}, done) : call.session.renegotiate({}, done);

      if (!started) { throw new Error(`call ${cmd.call} cannot send a re-INVITE now`); }
      break;
    }
    case 'stop':
    {
      need(agents, cmd.ua, 'UA').ua.stop();
      break;
    }
    case 'drop':
    {
      need(agents, cmd.ua, 'UA').socket.drop(Boolean(cmd.abrupt));
      break;
    }
    case 'quit':
    {
      for (const agent of agents.values()) { agent.ua.stop(); }
      // ua.stop() un-REGISTERs and ends calls; give it a moment on the wire.
      setTimeout(() => process.exit(0), cmd.grace_ms === undefined ? 200 : cmd.grace_ms);
      break;
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
  }
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });

input.on('line', (line) =>
{
  if (!line.trim()) { return; }
  let cmd;

  try
  {
    cmd = JSON.parse(line);
    run(cmd);
  }
  catch (e)
  {
    emit('error', { message: e.message, cmd: cmd ? cmd.cmd : null, id: cmd && cmd.id !== undefined ? cmd.id : null, line });
  }
});
// The test is gone (its end of the pipe closed): so are we.
input.on('close', () => process.exit(0));

process.on('uncaughtException', (e) =>
{
  log('uncaught', e && e.stack ? e.stack : String(e));
  emit('error', { message: `uncaught: ${e && e.message ? e.message : String(e)}`, cmd: null, id: null });
});

emit('ready', {
  jssip : JsSIP.version,
  ws    : require('ws/package.json').version,
  node  : process.version
});
