#!/usr/bin/env bash
# Record packet captures of REAL VPN client/server software talking to each other
# between two network namespaces, for use as vpn-filter test fixtures.
#
#   scripts/record-fixtures.sh                 # record every scenario
#   scripts/record-fixtures.sh wireguard-ipv4 pptp   # record a subset
#   scripts/record-fixtures.sh --list          # list scenario names
#
# Output: tests/fixtures/<scenario>.pcap (override the directory with OUT_DIR=...); the
# consumer-VPN scenarios (issue 15: tinc-*, mullvad-udp-over-tcp) write to
# tests/fixtures/consumer/<scenario>.pcap and are listed in its MANIFEST.tsv.
#
# Topology (recreated from scratch for every scenario):
#
#   netns vfrec-cli                          netns vfrec-srv
#   vfrec-c 10.200.0.2/24 fd00:200::2/64 <-> vfrec-s 10.200.0.1/24 fd00:200::1/64
#                                            (tcpdump --immediate-mode runs here)
#
# Keys and certificates are generated at record time into a temporary directory that is
# deleted on exit; nothing secret is written into the repository. An EXIT trap kills every
# process started by this script (by pid: the ones it launched plus whatever is left inside
# its own vfrec-* namespaces) and deletes the namespaces, whatever happens.
#
# Needs root, a kernel with veth, netns and TUN. No kernel WireGuard, ESP, L2TP or PPP is
# needed: wireguard-go and strongSwan's kernel-libipsec run in userspace, and the PPTP and
# L2TP scenarios only record the control handshakes (the sessions then fail for lack of
# kernel PPP, which is expected).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$REPO/tests/fixtures}
SRV=vfrec-srv
CLI=vfrec-cli
SRV_IF=vfrec-s
CLI_IF=vfrec-c
SRV4=10.200.0.1
CLI4=10.200.0.2
SRV6=fd00:200::1
CLI6=fd00:200::2
MAX_PACKETS=${MAX_PACKETS:-200}

ALL_SCENARIOS=(
    openvpn-udp-plain
    openvpn-udp-tls-auth
    openvpn-udp-tls-crypt
    openvpn-udp-tls-crypt-v2
    openvpn-tcp-tls-auth
    openvpn-tcp-tls-crypt
    openvpn-udp6-tls-auth
    wireguard-ipv4
    wireguard-ipv6
    ikev2-psk
    pptp
    l2tp
    openconnect
    tinc-udp
    tinc-tcp
    mullvad-udp-over-tcp
)

PACKAGES=(
    iproute2 iputils-ping tcpdump procps util-linux openssl
    openvpn
    wireguard-go wireguard-tools
    strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
    pptpd pptp-linux
    xl2tpd
    ocserv openconnect vpnc-scripts gnutls-bin
    tinc python3
)

log() { printf '[record-fixtures] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
WORK=""
OWN_POLICY=0   # 1 while we own a temporary /usr/sbin/policy-rc.d

kill_pids() { # signal pid...
    local sig=$1; shift
    local p
    for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
}

ns_pids() { # every process living in our namespace (found by pid, never by name)
    if ip netns list 2>/dev/null | grep -qw -- "$1"; then ip netns pids "$1" 2>/dev/null || true; fi
}

teardown_ns() {
    local ns pids
    for sig in TERM KILL; do
        pids="$(ns_pids "$SRV") $(ns_pids "$CLI")"
        # shellcheck disable=SC2086
        kill_pids "$sig" $pids
        if [[ ${#PIDS[@]} -gt 0 ]]; then kill_pids "$sig" "${PIDS[@]}"; fi
        [[ $sig == TERM ]] && sleep 0.5
    done
    PIDS=()
    for ns in "$SRV" "$CLI"; do
        if ip netns list 2>/dev/null | grep -qw -- "$ns"; then ip netns del "$ns" 2>/dev/null || true; fi
    done
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    teardown_ns
    [[ -n $WORK && -d $WORK ]] && rm -rf -- "$WORK"
    [[ $OWN_POLICY -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------- packages
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing: ${missing[*]}"
    # Never let package scripts start the daemons (openvpn, ocserv, pptpd, xl2tpd, ...) in
    # the root namespace: install a policy-rc.d for the duration if none exists.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        OWN_POLICY=1
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    if [[ $OWN_POLICY -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; OWN_POLICY=0; fi
    return 0
}

# --------------------------------------------------------------------------- helpers
# start NAME NS CMD...: run CMD in namespace NS in the background, log to $WORK/NAME.log
start() {
    local name=$1 ns=$2; shift 2
    ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    log "started $name (pid $!): $*"
}

# wait_for SECONDS CMD...: poll CMD until it succeeds
wait_for() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then return 1; fi
        sleep 0.2
    done
}

log_has() { grep -q -- "$2" "$WORK/$1.log" 2>/dev/null; }

setup_ns() {
    teardown_ns
    ip netns add "$SRV"
    ip netns add "$CLI"
    ip link add "$SRV_IF" netns "$SRV" type veth peer name "$CLI_IF" netns "$CLI"
    local ns
    for ns in "$SRV" "$CLI"; do
        ip -n "$ns" link set lo up
        # quiet link: no router solicitations / autoconf noise on the capture
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_ra=0 net.ipv6.conf.all.accept_ra=0 \
            net.ipv6.conf.default.router_solicitations=0 net.ipv6.conf.all.router_solicitations=0
    done
    ip -n "$SRV" addr add "$SRV4/24" dev "$SRV_IF"
    ip -n "$CLI" addr add "$CLI4/24" dev "$CLI_IF"
    ip -n "$SRV" addr add "$SRV6/64" dev "$SRV_IF" nodad
    ip -n "$CLI" addr add "$CLI6/64" dev "$CLI_IF" nodad
    ip -n "$SRV" link set "$SRV_IF" up
    ip -n "$CLI" link set "$CLI_IF" up
    ip netns exec "$SRV" sysctl -qw net.ipv4.ip_forward=1
    wait_for 10 ip netns exec "$CLI" ping -c1 -W1 "$SRV4"
    wait_for 10 ip netns exec "$CLI" ping -6 -c1 -W1 "$SRV6"
}

CAP_PID=""
CAP_FILE=""
# capture_start NAME: tcpdump on the server-side veth; ARP, IPv6 multicast (MLD) and ICMPv6 ND are left out
# (NAME may name a subdirectory of OUT_DIR: consumer/tinc-udp)
capture_start() {
    CAP_FILE="$OUT_DIR/$1.pcap"
    mkdir -p -- "$(dirname "$CAP_FILE")"
    rm -f -- "$CAP_FILE"
    ip netns exec "$SRV" tcpdump --immediate-mode -U -nn -Z root -i "$SRV_IF" -s 0 -c "$MAX_PACKETS" \
        -w "$CAP_FILE" 'not arp and not ip6 multicast and not (icmp6 and ip6[40] >= 130 and ip6[40] <= 143)' \
        >"$WORK/tcpdump.log" 2>&1 &
    CAP_PID=$!
    PIDS+=("$CAP_PID")
    wait_for 10 log_has tcpdump 'listening on' || die "tcpdump did not start"
    sleep 0.3
}

capture_stop() {
    sleep "${1:-1}"
    kill -INT "$CAP_PID" 2>/dev/null || true
    wait "$CAP_PID" 2>/dev/null || true
    log "$(basename "$CAP_FILE"): $(grep -h 'packets captured' "$WORK/tcpdump.log" || true)"
    CAP_PID=""
}

# tunnel_ping NS ADDR [PING-ARGS...]: a few pings through the tunnel once it is up
tunnel_ping() {
    local ns=$1 addr=$2; shift 2
    wait_for 20 ip netns exec "$ns" ping -c1 -W1 "$@" "$addr" || return 1
    ip netns exec "$ns" ping -c3 -i0.3 -W1 "$@" "$addr" >/dev/null || true
}

fail_scenario() { # name message: show the logs and give up on this scenario
    log "scenario $1 FAILED: $2"
    local f
    for f in "$WORK"/*.log; do log "---- $(basename "$f")"; tail -n 25 "$f" >&2 || true; done
    if [[ -n $CAP_PID ]]; then capture_stop 0; fi
    rm -f -- "$CAP_FILE"   # no half-recorded fixture
    return 1
}

# --------------------------------------------------------------------------- PKI
gen_pki() { # CA + server + client certificates (ECDSA P-256), once per run
    [[ -f $WORK/pki/ca.crt ]] && return 0
    local d=$WORK/pki
    mkdir -p "$d"
    (
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=vfrec test CA" -keyout ca.key -out ca.crt \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        local n eku san
        for n in server client; do
            if [[ $n == server ]]; then eku=serverAuth; san="DNS:server,IP:$SRV4,IP:$SRV6"; else eku=clientAuth; san="DNS:client"; fi
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$n" \
                -keyout "$n.key" -out "$n.csr" 2>/dev/null
            printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
                "$eku" "$san" >"$n.ext"
            openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile "$n.ext" -out "$n.crt" 2>/dev/null
        done
    )
}

# --------------------------------------------------------------------------- OpenVPN
# openvpn_scenario NAME PROTO(udp|tcp|udp6) WRAP(plain|tls-auth|tls-crypt|tls-crypt-v2)
openvpn_scenario() {
    local name=$1 proto=$2 wrap=$3
    gen_pki
    local d=$WORK/$name
    mkdir -p "$d"
    local sproto cproto remote
    case $proto in
        udp) sproto=udp; cproto=udp; remote=$SRV4 ;;
        udp6) sproto=udp6; cproto=udp6; remote=$SRV6 ;;
        tcp) sproto=tcp-server; cproto=tcp-client; remote=$SRV4 ;;
    esac
    local swrap="" cwrap=""
    case $wrap in
        plain) ;;
        tls-auth)
            openvpn --genkey secret "$d/ta.key" >/dev/null
            swrap="tls-auth $d/ta.key 0"; cwrap="tls-auth $d/ta.key 1" ;;
        tls-crypt)
            openvpn --genkey secret "$d/tc.key" >/dev/null
            swrap="tls-crypt $d/tc.key"; cwrap="tls-crypt $d/tc.key" ;;
        tls-crypt-v2)
            openvpn --genkey tls-crypt-v2-server "$d/v2-server.key" >/dev/null
            openvpn --tls-crypt-v2 "$d/v2-server.key" --genkey tls-crypt-v2-client "$d/v2-client.key" >/dev/null
            swrap="tls-crypt-v2 $d/v2-server.key"; cwrap="tls-crypt-v2 $d/v2-client.key" ;;
    esac
    cat >"$d/server.conf" <<EOF
dev tun
proto $sproto
local $( [[ $proto == udp6 ]] && echo "$SRV6" || echo "$SRV4")
port 1194
topology subnet
server 10.8.0.0 255.255.255.0
ca $WORK/pki/ca.crt
cert $WORK/pki/server.crt
key $WORK/pki/server.key
dh none
$swrap
keepalive 10 60
persist-tun
verb 3
EOF
    cat >"$d/client.conf" <<EOF
client
dev tun
proto $cproto
remote $remote 1194
nobind
ca $WORK/pki/ca.crt
cert $WORK/pki/client.crt
key $WORK/pki/client.key
remote-cert-tls server
$cwrap
connect-retry 1
verb 3
EOF
    capture_start "$name"
    start ovpn-server "$SRV" openvpn --config "$d/server.conf"
    wait_for 15 log_has ovpn-server 'Initialization Sequence Completed' ||
        { fail_scenario "$name" "openvpn server did not start"; return 1; }
    start ovpn-client "$CLI" openvpn --config "$d/client.conf"
    wait_for 30 log_has ovpn-client 'Initialization Sequence Completed' ||
        { fail_scenario "$name" "openvpn client did not connect"; return 1; }
    tunnel_ping "$CLI" 10.8.0.1 || { fail_scenario "$name" "no ping through the tunnel"; return 1; }
    capture_stop 1
}

# --------------------------------------------------------------------------- WireGuard
# wireguard_scenario NAME 4|6: wireguard-go on both sides (TUN), configured with wg(8);
# the underlay is IPv4 or IPv6, the tunnel carries IPv4 10.201.0.0/24.
wireguard_scenario() {
    local name=$1 fam=$2
    local d=$WORK/$name
    mkdir -p "$d"
    (umask 077; wg genkey >"$d/srv.key"; wg genkey >"$d/cli.key")
    wg pubkey <"$d/srv.key" >"$d/srv.pub"
    wg pubkey <"$d/cli.key" >"$d/cli.pub"
    local endpoint=$SRV4:51820
    [[ $fam == 6 ]] && endpoint="[$SRV6]:51820"
    # distinct interface names: the UAPI sockets live in the shared /run/wireguard/
    local sif=vfrecwgs cif=vfrecwgc
    capture_start "$name"
    start wg-server "$SRV" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$sif"
    start wg-client "$CLI" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$cif"
    wait_for 10 test -S "/run/wireguard/$sif.sock" || { fail_scenario "$name" "wireguard-go server did not start"; return 1; }
    wait_for 10 test -S "/run/wireguard/$cif.sock" || { fail_scenario "$name" "wireguard-go client did not start"; return 1; }
    ip netns exec "$SRV" wg set "$sif" listen-port 51820 private-key "$d/srv.key" \
        peer "$(cat "$d/cli.pub")" allowed-ips 10.201.0.2/32
    ip netns exec "$CLI" wg set "$cif" private-key "$d/cli.key" \
        peer "$(cat "$d/srv.pub")" allowed-ips 10.201.0.1/32 endpoint "$endpoint"
    ip -n "$SRV" addr add 10.201.0.1/24 dev "$sif"
    ip -n "$CLI" addr add 10.201.0.2/24 dev "$cif"
    ip -n "$SRV" link set "$sif" up
    ip -n "$CLI" link set "$cif" up
    tunnel_ping "$CLI" 10.201.0.1 || { fail_scenario "$name" "no ping through the tunnel"; return 1; }
    capture_stop 1
}

# --------------------------------------------------------------------------- strongSwan
# ikev2_scenario NAME: charon on both sides with kernel-libipsec (userspace ESP over a TUN;
# the kernel here has no ESP), IKEv2 with a pre-shared key. kernel-libipsec only does
# ESP-in-UDP, so the connections use encap=yes: IKE_SA_INIT on UDP 500, then IKE_AUTH and
# ESP on UDP 4500. Tunnel: 10.202.0.2 (client) <-> 10.202.0.1 (server).
ikev2_scenario() {
    local name=$1
    local d=$WORK/$name
    mkdir -p "$d"
    local psk
    psk=$(openssl rand -hex 24)
    local side ns laddr raddr lid rid lts rts
    for side in srv cli; do
        if [[ $side == srv ]]; then
            ns=$SRV laddr=$SRV4 raddr=$CLI4 lid=server rid=client lts=10.202.0.1 rts=10.202.0.2
        else
            ns=$CLI laddr=$CLI4 raddr=$SRV4 lid=client rid=server lts=10.202.0.2 rts=10.202.0.1
        fi
        ip -n "$ns" addr add "$lts/32" dev lo
        cat >"$d/$side-strongswan.conf" <<EOF
charon {
    load = random nonce aes sha1 sha2 hmac kdf curve25519 gmp pem pkcs1 x509 pubkey kernel-libipsec kernel-netlink socket-default vici updown
    install_virtual_ip = no
    plugins {
        vici {
            socket = unix://$d/$side.vici
        }
    }
    filelog {
        stderr {
            default = 1
            ike = 2
        }
    }
}
EOF
        (umask 077; cat >"$d/$side-swanctl.conf" <<EOF
connections {
    vfrec {
        version = 2
        local_addrs = $laddr
        remote_addrs = $raddr
        encap = yes
        local {
            auth = psk
            id = $lid
        }
        remote {
            auth = psk
            id = $rid
        }
        children {
            net {
                local_ts = $lts/32
                remote_ts = $rts/32
                mode = tunnel
                esp_proposals = aes256-sha256
            }
        }
    }
}
secrets {
    ike-vfrec {
        id-1 = server
        id-2 = client
        secret = 0x$psk
    }
}
EOF
        )
    done
    capture_start "$name"
    # charon insists on /run/charon.pid: give each charon its own /run (ip netns exec already
    # runs it in a private mount namespace, so the tmpfs is invisible outside)
    start charon-server "$SRV" env STRONGSWAN_CONF="$d/srv-strongswan.conf" \
        sh -c 'mount -t tmpfs vfrec-run /run && exec /usr/lib/ipsec/charon'
    start charon-client "$CLI" env STRONGSWAN_CONF="$d/cli-strongswan.conf" \
        sh -c 'mount -t tmpfs vfrec-run /run && exec /usr/lib/ipsec/charon'
    wait_for 15 test -S "$d/srv.vici" || { fail_scenario "$name" "charon (server) did not start"; return 1; }
    wait_for 15 test -S "$d/cli.vici" || { fail_scenario "$name" "charon (client) did not start"; return 1; }
    for side in srv cli; do
        STRONGSWAN_CONF="$d/$side-strongswan.conf" swanctl --load-all --noprompt --uri "unix://$d/$side.vici" --file "$d/$side-swanctl.conf" \
            >"$WORK/swanctl-$side.log" 2>&1 || { fail_scenario "$name" "swanctl --load-all ($side) failed"; return 1; }
    done
    STRONGSWAN_CONF="$d/cli-strongswan.conf" swanctl --initiate --child net --timeout 20 --uri "unix://$d/cli.vici" >"$WORK/swanctl-initiate.log" 2>&1 ||
        { fail_scenario "$name" "IKE/CHILD_SA did not come up"; return 1; }
    tunnel_ping "$CLI" 10.202.0.1 -I 10.202.0.2 || { fail_scenario "$name" "no ping through the tunnel"; return 1; }
    capture_stop 1
}

# --------------------------------------------------------------------------- PPTP
# pptp_scenario NAME: pptpd (server) and pptp-linux (client). The TCP 1723 control
# connection (SCCRQ/SCCRP, OCRQ/OCRP) completes; the PPP session over enhanced GRE then
# fails because this kernel has no PPP support, which is expected.
pptp_scenario() {
    local name=$1
    local d=$WORK/$name
    mkdir -p "$d"
    cat >"$d/pptpd.conf" <<EOF
option $d/pptpd-options
localip 10.203.0.1
remoteip 10.203.0.2-10
listen $SRV4
EOF
    cat >"$d/pptpd-options" <<EOF
name vfrec-pptpd
refuse-pap
refuse-chap
refuse-mschap
require-mschap-v2
nodefaultroute
noipx
nobsdcomp
debug
EOF
    capture_start "$name"
    start pptpd "$SRV" pptpd --fg --debug -c "$d/pptpd.conf" -o "$d/pptpd-options" -p "$d/pptpd.pid"
    wait_for 10 ip netns exec "$SRV" sh -c "ss -Htln | grep -q ':1723 '" ||
        { fail_scenario "$name" "pptpd is not listening"; return 1; }
    # the usual client invocation: pptp launches pppd itself (which then dies: no /dev/ppp)
    start pptp "$CLI" pptp "$SRV4" --nohostroute --loglevel 2 nodetach debug noauth
    sleep 5
    capture_stop 1
}

# --------------------------------------------------------------------------- L2TP
# l2tp_scenario NAME: xl2tpd as LNS (server) and as LAC (client, autodial). The L2TPv2
# control exchange on UDP 1701 (SCCRQ/SCCRP/SCCCN, ICRQ/ICRP/ICCN) completes; the PPP
# session then fails because this kernel has no PPP support, which is expected.
l2tp_scenario() {
    local name=$1
    local d=$WORK/$name
    mkdir -p "$d"
    printf 'noauth\nnodefaultroute\ndebug\n' >"$d/ppp-options"
    cat >"$d/server.conf" <<EOF
[global]
listen-addr = $SRV4
port = 1701
[lns default]
ip range = 10.204.0.2-10.204.0.10
local ip = 10.204.0.1
require authentication = no
name = vfrec-lns
pppoptfile = $d/ppp-options
length bit = yes
EOF
    cat >"$d/client.conf" <<EOF
[global]
listen-addr = $CLI4
port = 1701
[lac vfrec]
lns = $SRV4
autodial = yes
redial = no
require authentication = no
name = vfrec-lac
pppoptfile = $d/ppp-options
length bit = yes
EOF
    : >"$d/l2tp-secrets"
    capture_start "$name"
    start xl2tpd-server "$SRV" xl2tpd -D -c "$d/server.conf" -s "$d/l2tp-secrets" -p "$d/server.pid" -C "$d/server.ctl"
    wait_for 10 ip netns exec "$SRV" sh -c "ss -Huln | grep -q ':1701 '" ||
        { fail_scenario "$name" "xl2tpd (server) is not listening"; return 1; }
    start xl2tpd-client "$CLI" xl2tpd -D -c "$d/client.conf" -s "$d/l2tp-secrets" -p "$d/client.pid" -C "$d/client.ctl"
    sleep 5
    capture_stop 1
}

# --------------------------------------------------------------------------- OpenConnect
# openconnect_scenario NAME: ocserv (server) and openconnect (client, AnyConnect protocol):
# TLS on TCP 443 (HTTP auth + CSTP CONNECT), then the DTLS data channel on UDP 443.
openconnect_scenario() {
    local name=$1
    gen_pki
    local d=$WORK/$name
    mkdir -p "$d"
    local pass
    pass=$(openssl rand -hex 12)
    printf 'vfrec:*:%s\n' "$(openssl passwd -6 "$pass")" >"$d/ocpasswd"
    cat >"$d/ocserv.conf" <<EOF
auth = "plain[passwd=$d/ocpasswd]"
listen-host = $SRV4
tcp-port = 443
udp-port = 443
run-as-user = nobody
run-as-group = nogroup
socket-file = $d/ocserv.sock
pid-file = $d/ocserv.pid
server-cert = $WORK/pki/server.crt
server-key = $WORK/pki/server.key
isolate-workers = false
use-occtl = false
max-clients = 4
max-same-clients = 2
keepalive = 32400
dpd = 90
mobile-dpd = 1800
switch-to-tcp-timeout = 25
try-mtu-discovery = false
tls-priorities = "NORMAL:%SERVER_PRECEDENCE"
auth-timeout = 240
min-reauth-time = 3
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
device = vpns
predictable-ips = true
ipv4-network = 10.205.0.0
ipv4-netmask = 255.255.255.0
route = 10.205.0.0/255.255.255.0
EOF
    cat >"$d/vpnc-script" <<'EOF'
#!/bin/sh
# minimal stand-in for vpnc-script: configure the tun only, never touch resolv.conf
if [ "$reason" = connect ]; then
    ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1300}"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    ip route add 10.205.0.0/24 dev "$TUNDEV"
fi
exit 0
EOF
    chmod 755 "$d/vpnc-script"
    capture_start "$name"
    start ocserv "$SRV" ocserv --foreground --debug 2 -c "$d/ocserv.conf"
    wait_for 10 ip netns exec "$SRV" sh -c "ss -Htln | grep -q '$SRV4:443 '" ||
        { fail_scenario "$name" "ocserv is not listening"; return 1; }
    start openconnect "$CLI" sh -c "echo $pass | exec openconnect --protocol=anyconnect --user=vfrec \
        --passwd-on-stdin --non-inter --cafile $WORK/pki/ca.crt --script $d/vpnc-script https://$SRV4/"
    wait_for 30 log_has openconnect 'Established DTLS connection' ||
        { fail_scenario "$name" "openconnect did not establish DTLS"; return 1; }
    local peer
    peer=$(ip -n "$SRV" -4 -o addr show | sed -n 's/.* inet \(10\.205\.[0-9.]*\).*/\1/p' | head -n1)
    [[ -n $peer ]] || { fail_scenario "$name" "no server-side tunnel address"; return 1; }
    tunnel_ping "$CLI" "$peer" || { fail_scenario "$name" "no ping through the tunnel"; return 1; }
    capture_stop 1
}

# --------------------------------------------------------------------------- tinc
# tinc_scenario NAME udp|tcp: tincd 1.0 on both sides (router mode, TUN), RSA keys made with
# `tincd -K`. The client's tincd opens the TCP meta connection to the server's port 655 (ID
# line, METAKEY, CHALLENGE, ...); with `udp` the pings then travel as UDP 655 <-> 655
# datagrams, with `tcp` (TCPOnly = yes on both sides) inside the meta connection.
# Tunnel: 10.206.0.2 (client) <-> 10.206.0.1 (server).
tinc_scenario() {
    local name=$1 mode=$2
    local d=$WORK/$name
    local side node peer addr iface
    for side in srv cli; do
        if [[ $side == srv ]]; then node=vfrecsrv peer=vfreccli addr=10.206.0.1 iface=vfrectincs
        else node=vfreccli peer=vfrecsrv addr=10.206.0.2 iface=vfrectincc; fi
        mkdir -p "$d/$side/hosts"
        {
            echo "Name = $node"
            echo "Interface = $iface"
            echo "Device = /dev/net/tun"
            echo "AddressFamily = ipv4"
            [[ $side == srv ]] && echo "BindToAddress = $SRV4" || echo "ConnectTo = $peer"
            [[ $mode == tcp ]] && echo "TCPOnly = yes"
        } >"$d/$side/tinc.conf"
        printf '#!/bin/sh\nip addr add %s/24 dev "$INTERFACE"\nip link set "$INTERFACE" up\n' "$addr" >"$d/$side/tinc-up"
        chmod 755 "$d/$side/tinc-up"
        printf 'Subnet = %s/32\n' "$addr" >"$d/$side/hosts/$node"
        [[ $side == srv ]] && printf 'Address = %s\nPort = 655\n' "$SRV4" >>"$d/$side/hosts/$node"
        [[ $mode == tcp ]] && echo "TCPOnly = yes" >>"$d/$side/hosts/$node"
        tincd -c "$d/$side" -K2048 </dev/null >"$WORK/tinc-keygen-$side.log" 2>&1
    done
    cp "$d/srv/hosts/vfrecsrv" "$d/cli/hosts/vfrecsrv"
    cp "$d/cli/hosts/vfreccli" "$d/srv/hosts/vfreccli"
    capture_start "consumer/$name"
    start tinc-server "$SRV" tincd -c "$d/srv" -D -d2 --pidfile="$d/srv.pid"
    wait_for 10 ip netns exec "$SRV" sh -c "ss -Htln | grep -q ':655 '" ||
        { fail_scenario "$name" "tincd (server) is not listening"; return 1; }
    start tinc-client "$CLI" tincd -c "$d/cli" -D -d2 --pidfile="$d/cli.pid"
    tunnel_ping "$CLI" 10.206.0.1 || { fail_scenario "$name" "no ping through the tunnel"; return 1; }
    if [[ $mode == udp ]]; then
        # tincd sends over the meta connection until its UDP path MTU probes succeed (about
        # a second): ping again afterwards, so that the capture also holds ICMP in UDP 655
        sleep 4
        ip netns exec "$CLI" ping -c3 -i0.3 -W1 10.206.0.1 >/dev/null || true
    fi
    capture_stop 1
}

# --------------------------------------------------------------------------- Mullvad UDP-over-TCP
# The framing of mullvad/udp-over-tcp (src/forward_traffic.rs): every UDP datagram is written
# to the TCP stream as a 2-byte big-endian length followed by the datagram, one write per
# datagram. udp2tcp (client side) connects to the relay at start and takes the first
# datagram's sender as its UDP peer; tcp2udp (relay side) forwards to the local WireGuard port. The crate of that name on
# crates.io is an unrelated tool (jonhoo/udp-over-tcp), Mullvad's is not published there, so
# this stand-in implements exactly that framing (TCP_NODELAY set, as mullvadvpn-app's
# tunnel-obfuscation/src/udp2tcp.rs does).
UOT_PY='
import socket, struct, sys, threading
mode, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
def addr(s):
    h, p = s.rsplit(":", 1)
    return (h, int(p))
def tcp2udp_pump(t, u):
    buf = b""
    while True:
        d = t.recv(65536)
        if not d:
            return
        buf += d
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
            n = struct.unpack(">H", buf[:2])[0]
            u.send(buf[2:2 + n])
            buf = buf[2 + n:]
def udp2tcp_pump(u, t):
    while True:
        d = u.recv(65535)
        t.sendall(struct.pack(">H", len(d)) + d)
if mode == "udp2tcp":          # a = local UDP listen, b = relay TCP address
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t.connect(addr(b))         # at start, as Udp2Tcp::new does (lazy_connect false)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(addr(a))
    first, peer = u.recvfrom(65535)
    u.connect(peer)
    t.sendall(struct.pack(">H", len(first)) + first)
else:                          # tcp2udp: a = TCP listen, b = WireGuard UDP address
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(addr(a))
    ls.listen(1)
    t, _ = ls.accept()
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(addr(b))
threading.Thread(target=tcp2udp_pump, args=(t, u), daemon=True).start()
udp2tcp_pump(u, t)
'

# mullvad_uot_scenario NAME: wireguard-go on both sides, the client's endpoint is a local
# udp2tcp (127.0.0.1:51821), which carries the datagrams over TCP to the relay's tcp2udp on
# 10.200.0.1:443, which hands them to the server's wireguard-go on 127.0.0.1:51820.
mullvad_uot_scenario() {
    local name=$1
    local d=$WORK/$name
    mkdir -p "$d"
    printf '%s\n' "$UOT_PY" >"$d/uot.py"
    (umask 077; wg genkey >"$d/srv.key"; wg genkey >"$d/cli.key")
    wg pubkey <"$d/srv.key" >"$d/srv.pub"
    wg pubkey <"$d/cli.key" >"$d/cli.pub"
    local sif=vfrecwgs cif=vfrecwgc
    capture_start "consumer/$name"
    start tcp2udp "$SRV" python3 "$d/uot.py" tcp2udp "$SRV4:443" 127.0.0.1:51820
    wait_for 10 ip netns exec "$SRV" sh -c "ss -Htln | grep -q ':443 '" ||
        { fail_scenario "$name" "tcp2udp is not listening"; return 1; }
    start udp2tcp "$CLI" python3 "$d/uot.py" udp2tcp 127.0.0.1:51821 "$SRV4:443"
    wait_for 10 ip netns exec "$CLI" sh -c "ss -Huln | grep -q ':51821 '" ||
        { fail_scenario "$name" "udp2tcp is not listening"; return 1; }
    start wg-server "$SRV" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$sif"
    start wg-client "$CLI" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$cif"
    wait_for 10 test -S "/run/wireguard/$sif.sock" || { fail_scenario "$name" "wireguard-go server did not start"; return 1; }
    wait_for 10 test -S "/run/wireguard/$cif.sock" || { fail_scenario "$name" "wireguard-go client did not start"; return 1; }
    ip netns exec "$SRV" wg set "$sif" listen-port 51820 private-key "$d/srv.key" \
        peer "$(cat "$d/cli.pub")" allowed-ips 10.201.0.2/32
    # the client's own port is fixed, so that udp2tcp's peer never changes
    ip netns exec "$CLI" wg set "$cif" listen-port 51822 private-key "$d/cli.key" \
        peer "$(cat "$d/srv.pub")" allowed-ips 10.201.0.1/32 endpoint 127.0.0.1:51821
    ip -n "$SRV" addr add 10.201.0.1/24 dev "$sif"
    ip -n "$CLI" addr add 10.201.0.2/24 dev "$cif"
    ip -n "$SRV" link set "$sif" up
    ip -n "$CLI" link set "$cif" up
    tunnel_ping "$CLI" 10.201.0.1 || { fail_scenario "$name" "no ping through the tunnel"; return 1; }
    capture_stop 1
}

# --------------------------------------------------------------------------- scenarios
run_scenario() {
    case $1 in
        openvpn-udp-plain) openvpn_scenario "$1" udp plain ;;
        openvpn-udp-tls-auth) openvpn_scenario "$1" udp tls-auth ;;
        openvpn-udp-tls-crypt) openvpn_scenario "$1" udp tls-crypt ;;
        openvpn-udp-tls-crypt-v2) openvpn_scenario "$1" udp tls-crypt-v2 ;;
        openvpn-tcp-tls-auth) openvpn_scenario "$1" tcp tls-auth ;;
        openvpn-tcp-tls-crypt) openvpn_scenario "$1" tcp tls-crypt ;;
        openvpn-udp6-tls-auth) openvpn_scenario "$1" udp6 tls-auth ;;
        wireguard-ipv4) wireguard_scenario "$1" 4 ;;
        wireguard-ipv6) wireguard_scenario "$1" 6 ;;
        ikev2-psk) ikev2_scenario "$1" ;;
        pptp) pptp_scenario "$1" ;;
        l2tp) l2tp_scenario "$1" ;;
        openconnect) openconnect_scenario "$1" ;;
        tinc-udp) tinc_scenario "$1" udp ;;
        tinc-tcp) tinc_scenario "$1" tcp ;;
        mullvad-udp-over-tcp) mullvad_uot_scenario "$1" ;;
        *) die "unknown scenario '$1' (try --list)" ;;
    esac
}

main() {
    if [[ ${1:-} == --list ]]; then printf '%s\n' "${ALL_SCENARIOS[@]}"; exit 0; fi
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local scenarios=("$@")
    [[ ${#scenarios[@]} -gt 0 ]] || scenarios=("${ALL_SCENARIOS[@]}")
    local s
    for s in "${scenarios[@]}"; do
        [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s' (try --list)"
    done
    install_packages
    mkdir -p "$OUT_DIR"
    WORK=$(mktemp -d /tmp/vfrec.XXXXXX)
    chmod 755 "$WORK"
    local failed=()
    for s in "${scenarios[@]}"; do
        log "=== $s"
        setup_ns
        # A subshell, so that `set -e` stays in force inside the scenario (it would be
        # ignored in an `if` condition), run in the background and waited for, so that an
        # INT/TERM reaches our trap at once. Everything it starts lives in the namespaces,
        # which teardown_ns empties by pid.
        (set -e; run_scenario "$s") &
        local spid=$!
        PIDS+=("$spid")
        set +e
        wait "$spid"
        local rc=$?
        set -e
        PIDS=()   # reaped: never signal that pid again
        [[ $rc -eq 0 ]] || failed+=("$s")
        teardown_ns
        rm -f -- "$WORK"/*.log
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        log "failed scenarios: ${failed[*]}"
        exit 1
    fi
    log "all done: ${scenarios[*]}"
}

main "$@"
