#!/usr/bin/env python3
"""Writes the hand-made seeds of the fuzz targets into fuzz/corpus/<target>/ (named
seed-*; the other files there are a minimized corpus, see docs/fuzzing.md).

Run from anywhere: python3 fuzz/make_seeds.py
"""
import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
JWT_SECRET = b"fuzz-secret-0123456789abcdef0123"  # fuzz_targets/request.rs


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- request: a selector byte, then a request head -------------------------------
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=JWT_SECRET):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    s = b64(hmac.new(secret, (h + "." + p).encode(), hashlib.sha256).digest())
    return f"{h}.{p}.{s}"


FAR = 4102444800  # 2100-01-01
good = jwt({"tenant": "acme", "exp": FAR})
other = jwt({"tenant": "globex", "exp": FAR})
expired = jwt({"tenant": "acme", "exp": 1000})
badsig = jwt({"tenant": "acme", "exp": FAR}, secret=b"another-secret-another-secret-xx")
UPGRADE = (
    "Connection: Upgrade, x-hop\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def req(name, selector, target, headers, host="sluice.example:8080"):
    head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{UPGRADE}{headers}\r\n"
    out("request", name, bytes([selector]) + head.encode())


req("jwt-bearer", 0, "/t/acme/ws?a=1", f"Authorization: Bearer {good}\r\nSec-WebSocket-Protocol: sip\r\nx-hop: 1\r\n")
req("jwt-query", 0, f"/t/ACME/ws/v1?x=%20&access_token={good}&y", "Sec-WebSocket-Protocol: v2.sip, sip\r\n")
req("jwt-subprotocol", 1, "/ws", f"X-Org: acme\r\nSec-WebSocket-Protocol: access_token.{good}, sip\r\n")
req("jwt-wrong-tenant", 0, "/t/acme/", f"Authorization: bearer {other}\r\n")
req("jwt-expired", 0, "/t/acme", f"Sec-WebSocket-Protocol: access_token.{expired}\r\n")
req("jwt-bad-signature", 0, "/t/acme/x", f"Authorization: Bearer {badsig}\r\n")
req("apikey-bearer", 0, "/ws", "x-tenant-id: globex\r\nAuthorization: Bearer globex-demo-key\r\nAuthorization: Basic Zm9vOmJhcg==\r\n")
req("apikey-query", 2, "/ws?access_token=globex-demo-key&access_token=other&b=2", "Sec-WebSocket-Protocol: sip\r\n", host="globex.softphone.example.com:8443")
req("apikey-query-encoded", 0, "/t/globex/ws?access%5Ftoken=globex%2Ddemo%2Dkey", "")
req("apikey-subprotocol", 4, "/t/globex/ws", "Sec-WebSocket-Protocol: access_token.globex-demo-key\r\nSec-WebSocket-Protocol: chat\r\n")
req("none-host", 1, "/ws", "Sec-WebSocket-Protocol: sip, access_token.leak\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: evil\r\n", host="initech.SIP.example.net.")
req("none-path", 6, "/t/initech/a/b?c=d", "Sec-WebSocket-Protocol: access_token.x\r\nConnection: keep-alive, x-tenant-id\r\nx-tenant-id: globex\r\n")
req("default-unknown", 1, "/t/unknown-co/ws", "")
req("unknown-reject", 0, "/t/unknown-co/ws", "")
req("absolute-form", 0, "http://acme.softphone.example.com/ws?access_token=abc", "Authorization: Bearer abc\r\n", host="acme.softphone.example.com")

# --- config: TOML, optionally "\n#%env\n" and NAME=value lines ----------------------
with open(os.path.join(HERE, "..", "config", "sluice.toml")) as f:
    example = f.read().replace(
        'auth = { kind = "jwt", secret_file = "acme-jwt.secret" }',
        'auth = { kind = "jwt", secret_env = "FUZZ_JWT_SECRET" }',
    )
out("config", "sluice.toml", example)
for name in ["auth-api-key", "auth-none"]:
    with open(os.path.join(HERE, "..", "config", name + ".toml")) as f:
        out("config", name + ".toml", f.read())
with open(os.path.join(HERE, "..", "config", "auth-jwt.toml")) as f:
    out("config", "auth-jwt.toml", f.read() + "\n#%env\nSLUICE_ACME_JWT_SECRET=0123456789abcdef0123456789abcdef\n")
out("config", "minimal.toml", """[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:7001"]
[tenants.a]
auth = { kind = "none" }
""")
out("config", "default-only.toml", """[tenant_identity]
sources = ["host"]
host_suffix = "Example.COM"
unknown = "default"
[upstream]
default_group = "g"
[upstream.groups.g]
endpoints = ["wss://[::1]:8443/base?org=x&y", "ws://edge.example:80"]
""")
out("config", "edge-accept-env.toml", """[edge]
max_sessions = 10
handshake_rate = 0.5
handshake_burst = 1
[accept]
max_message_bytes = 1024
held_bytes = 1
held_messages = 1
[protection]
max_header_bytes = 8192
idle_timeout = "10m"
[upstream.groups.primary]
endpoints = ["ws://127.0.0.1:7001"]
[tenants.t-1]
queue_mode = "accept"
subprotocols = ["sip", "v2.sip"]
queue_depth = 0
weight = 7
auth = { kind = "jwt", secret_env = "FUZZ_JWT_SECRET" }

#%env
SLUICE__TENANTS__T-1__MAX_SESSIONS=3
SLUICE__UPSTREAM__GROUPS__PRIMARY__ENDPOINTS=ws://a:1,ws://b:2
""")
out("config", "invalid-many.toml", """[listen]
address = "nowhere"
tls_cert = "c.pem"
[tenant_identity]
sources = ["path", "path", "dns"]
header = "bad header"
[upstream]
retry_budget = "1s"
handshake_timeout = "2s"
adaptive_factor = 1.0
[upstream.groups.primary]
endpoints = ["http://x", "ws://u:p@h", "ws://h", "ws://h"]
[defaults]
handshake_rate = -1.0
max_sessions = 0
subprotocols = ["", "a b"]
[tenants._x]
auth = { kind = "none" }
[tenants.Big]
auth = { kind = "api-key", key_sha256 = ["zz"] }
[tenants.j]
upstream_group = "nope"
auth = { kind = "jwt", secret_env = "MISSING" }
""")


# --- accept_frames: two limit bytes, then client frames ---------------------------
def frame(op, payload, fin=True, mask=b"\x37\xfa\x21\x3d", rsv=0):
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload)
    if n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n < 65536:
        hdr = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def close(code, reason=b""):
    return frame(8, struct.pack(">H", code) + reason)


# Limit bytes (fuzz_targets/accept_frames.rs): a = max_message 16 << (a & 7), read
# chunk 1 + (a >> 3) * 97; b = held messages 1 + (b & 15), held bytes 64 << (b >> 4 & 7).
frames = {
    "text-close": (b"\x06\x47", frame(1, b"INVITE sip:bob@example.com SIP/2.0") + close(1000, b"bye")),
    "fragmented": (b"\x07\x47", frame(1, b"Hel", fin=False) + frame(0, b"lo, ", fin=False) + frame(9, b"p") + frame(0, b"world")),
    "ping-pong": (b"\x0b\x05", frame(9, b"ping") + frame(10, b"pong") + frame(2, bytes(range(20)))),
    "binary-many": (b"\x0c\x02", b"".join(frame(2, bytes([i]) * 10) for i in range(6))),
    "too-big": (b"\x00\x77", frame(1, b"x" * 40)),
    "too-big-fragmented": (b"\x08\x77", frame(2, b"y" * 10, fin=False) + frame(0, b"y" * 10)),
    "unmasked": (b"\x06\x47", bytes([0x81, 5]) + b"hello"),
    "bad-utf8": (b"\x06\x47", frame(1, b"\xff\xfe")),
    "close-no-code": (b"\x06\x47", frame(8, b"")),
    "close-bad-code": (b"\x06\x47", close(1005) + frame(1, b"after close")),
    "rsv-bits": (b"\x06\x47", frame(1, b"deflated?", rsv=0x40)),
    "long-length": (b"\x07\x47", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + b"\0\0\0\0"),
    "truncated": (b"\x06\x47", frame(1, b"hello")[:7]),
    "continuation-first": (b"\x06\x47", frame(0, b"orphan")),
}
for name, (limits, body) in frames.items():
    out("accept_frames", name, limits + body)


# --- sip: one WebSocket message of a SIP tenant (RFC 7118) -------------------------
def sip(name, text, body=None, eol="\r\n"):
    text = text.replace("\n", eol)
    if body is not None:
        body = body.replace("\n", "\r\n")
        text += f"Content-Length: {len(body)}{eol}{eol}{body}"
    out("sip", name, text)


SDP = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8
c=IN IP4 0.0.0.0
a=ice-ufrag:8hhY
a=ice-pwd:asd88fgpdd777uzjYhagZg2b
a=setup:actpass
a=mid:0
a=rtpmap:111 opus/48000/2
"""
sip("jssip-invite", """INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch=z9hG4bK1735891
Max-Forwards: 69
To: <sip:bob@example.com>
From: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 8027 INVITE
Contact: <sip:3m8pf1vf@8d1pjr0hq8vg.invalid;transport=ws;ob>
Content-Type: application/sdp
Supported: timer,ice,replaces,outbound
User-Agent: JsSIP 3.10.1
""", SDP)
sip("edge-200", """SIP/2.0 200 OK
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;rport=52341;received=203.0.113.7;branch=z9hG4bK1735891
Record-Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>, <sip:198.51.100.10;transport=ws;r2=on;lr>
Record-Route: <sip:edge3.example.net;lr>
From: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
To: <sip:bob@example.com>;tag=as5f3c1e2a
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 8027 INVITE
Contact: "Bob" <sip:bob@192.0.2.44:5060;transport=udp>;expires=3600
Content-Type: application/sdp
""", "v=0\no=edge 1 1 IN IP4 192.0.2.44\ns=-\nc=IN IP4 192.0.2.44\nt=0 0\nm=audio 30000 RTP/SAVPF 111\n")
sip("sipjs-register", """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/WSS 2f5mhk0u7l3e.invalid;branch=z9hG4bK5427836
To: <sip:alice@example.com>
From: <sip:alice@example.com>;tag=h4rtq8d2ib
CSeq: 2 REGISTER
Call-ID: 9tm0eprg8ot3a8iu3mvbfd
Max-Forwards: 70
Authorization: Digest algorithm=MD5, username="alice", realm="example.com", nonce="YzQ4ZDk1", uri="sip:example.com", response="9c2d0a3b0f8e4e5f", qop=auth, cnonce="p1v6", nc=00000001
Contact: <sip:k3u5o0v4@2f5mhk0u7l3e.invalid;transport=ws>;reg-id=1;+sip.instance="<urn:uuid:bb5e2e6c-d3a2-4c1f-9b0a-1f3c7e0d9a11>";expires=600
Expires: 600
User-Agent: SIP.js/0.21.2
Content-Length: 0

""")
sip("compact-folded-lf", """OPTIONS sip:user@example.com SIP/2.0
v: SIP/2.0/WSS df7jal23ls0d.invalid
  ;BRANCH=z9hG4bKfold1
t: sip:user@example.com
f: "Caller, Inc." <sip:caller@example.net;tag=inside>
 ;TAG=98asjd8
i: wsinv.ndaksdj@192.0.2.1
CSeq:
\t9 OPTIONS
m: <sip:caller@192.0.2.4;transport=ws>
l: 0

""", eol="\n")
sip("cancel", """CANCEL sip:bob@example.com SIP/2.0
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;branch=z9hG4bK1735891
Max-Forwards: 69
To: <sip:bob@example.com>
From: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 8027 CANCEL
Content-Length: 0

""")
sip("edge-bye", """BYE sip:3m8pf1vf@8d1pjr0hq8vg.invalid;transport=ws;ob SIP/2.0
Via: SIP/2.0/WSS 198.51.100.10;branch=z9hG4bK2c6a.7e1f3d2a0b
Via: SIP/2.0/UDP 192.0.2.44:5060;rport=5060;branch=z9hG4bK-524287-1---9a8b
Max-Forwards: 69
Route: <sip:edge2.example.net;lr;ftag=q3k1mm2hn0>
From: <sip:bob@example.com>;tag=as5f3c1e2a
To: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 102 BYE
Content-Length: 0

""")
sip("ringing-many-vias", """SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK.proxy2, SIP/2.0/UDP 10.0.0.4;branch=z9hG4bK.proxy1
Via: SIP/2.0/WSS 8d1pjr0hq8vg.invalid;received=203.0.113.7;branch=z9hG4bK1735891;rport=52341
From: "Alice Smith" <sip:alice@example.com>;tag=q3k1mm2hn0
To: <sip:bob@example.com>;tag=as5f3c1e2a
Call-ID: 6ii6pr7g0ol0fd4bq5k9
CSeq: 8027 INVITE
Content-Length: 0

""")
sip("keepalive", "\n\n")
