// Package embedbroker runs an in-process MQTT broker (mochi-mqtt) for the
// zero-setup quickstart. It enforces the same accounts and ACL as
// broker-config/acl does for Mosquitto: the issuer reads registrations,
// statuses, roots and the epoch, and writes tickets, roots, the epoch and
// its liveness; each
// device writes only its own registration and status and reads only its own
// ticket, the roots, the epoch and the issuer's liveness; the monitor reads
// everything and writes nothing. Like the shipped Mosquitto configuration
// (use_username_as_clientid), it replaces every client's id with its
// username, so no account can take over another account's session; every
// issuer and monitor instance has its own account (ekem-issuer-2, …;
// brokerconfig.ServiceRole). Production and the integration tests use
// Mosquitto; this broker keeps nothing on disk.
package embedbroker

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Reserved account names, as in broker-config.
const (
	IssuerUser  = "ekem-issuer"
	MonitorUser = "ekem-monitor"
)

// Broker is a running embedded broker.
type Broker struct {
	srv  *mqtt.Server
	addr string
	acl  *aclHook
}

// Start listens on addr (e.g. "127.0.0.1:0" for a free port) and serves
// until Close. prefix is the topic prefix the ACL protects.
func Start(addr, prefix string, log *slog.Logger) (*Broker, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("embedbroker: listen on %s: %w", addr, err)
	}
	bound := ln.Addr().String()
	ln.Close()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumInflight = 65535
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: log, InlineClient: false})
	h := &aclHook{prefix: prefix, users: map[string][]byte{}, srv: srv}
	if err := srv.AddHook(h, nil); err != nil {
		return nil, fmt.Errorf("embedbroker: %w", err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: bound})); err != nil {
		return nil, fmt.Errorf("embedbroker: listen on %s: %w", bound, err)
	}
	if err := srv.Serve(); err != nil {
		return nil, fmt.Errorf("embedbroker: %w", err)
	}
	return &Broker{srv: srv, addr: bound, acl: h}, nil
}

// URL is the broker's address as tcp://host:port.
func (b *Broker) URL() string { return "tcp://" + b.addr }

// AddUser adds an account. Device accounts are named by their device id.
func (b *Broker) AddUser(name, password string) error {
	if brokerconfig.ServiceRole(name) == "" {
		if err := wire.ValidateDeviceID(name); err != nil {
			return fmt.Errorf("embedbroker: account %q: %w", name, err)
		}
		if brokerconfig.IsReservedName(name) {
			return fmt.Errorf("embedbroker: account %q: reserved for service instances", name)
		}
	}
	if password == "" {
		return errors.New("embedbroker: empty password")
	}
	b.acl.mu.Lock()
	defer b.acl.mu.Unlock()
	b.acl.users[name] = []byte(password)
	return nil
}

// Close stops the broker.
func (b *Broker) Close() error { return b.srv.Close() }

type aclHook struct {
	mqtt.HookBase
	srv    *mqtt.Server
	prefix string
	mu     sync.Mutex
	users  map[string][]byte
}

func (h *aclHook) ID() string { return "ekem-acl" }

func (h *aclHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnectAuthenticate allows known accounts with the right password;
// anonymous clients are refused. An accepted client's id becomes its
// username (Mosquitto's use_username_as_clientid): the server looks up the
// session to take over by this id right after this hook, so a second
// connection of one account takes over the first, and no account can take
// over another's.
func (h *aclHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	h.mu.Lock()
	want, ok := h.users[string(pk.Connect.Username)]
	h.mu.Unlock()
	if !ok || len(pk.Connect.Password) == 0 || subtle.ConstantTimeCompare(want, pk.Connect.Password) != 1 {
		return false
	}
	cl.ID = string(pk.Connect.Username)
	h.awaitTeardown(cl.ID)
	return true
}

// teardownWait bounds awaitTeardown.
const teardownWait = 2 * time.Second

// awaitTeardown ends the clean session of another connection with id and
// waits until it has left the server, before the new connection takes the
// id. mochi-mqtt's own takeover races with the old connection's teardown:
// the old connection, closing, removes its subscriptions and its entry by
// client id, and when that runs after the new connection subscribed (with
// the same id, to the same filters), it removes the new connection's as
// well, which then never receives a message. An issuer that reconnects at
// once with its one id (its start-up read of the broker, then its session)
// hits that window. A persistent session (clean=false) is never torn down
// that way and is taken over as usual.
func (h *aclHook) awaitTeardown(id string) {
	old, ok := h.srv.Clients.Get(id)
	if !ok || !cleanSession(old) {
		return
	}
	if !old.Closed() {
		_ = h.srv.DisconnectClient(old, packets.ErrSessionTakenOver)
	}
	deadline := time.Now().Add(teardownWait)
	for time.Now().Before(deadline) {
		if cur, ok := h.srv.Clients.Get(id); !ok || cur != old {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// cleanSession reports whether the server removes cl when it closes (as
// mochi-mqtt decides it).
func cleanSession(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

// OnACLCheck applies broker-config/acl's rules.
func (h *aclHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return Allowed(h.prefix, string(cl.Properties.Username), topic, write)
}

// Allowed reports whether user may write (publish) or read (subscribe to)
// topic, a topic name or a subscription filter.
func Allowed(prefix, user, topic string, write bool) bool {
	p := prefix + "/"
	switch brokerconfig.ServiceRole(user) {
	case IssuerUser:
		if write {
			return matchAny(topic, p+"ticket/+", p+"root/+", p+"epoch", p+"issuer/online", p+"issuer/key/+")
		}
		return matchAny(topic, p+"reg/+", p+"status/+", p+"root/+", p+"epoch")
	case MonitorUser:
		// Cohorts' application topics are for their members (acl: the
		// monitor's deny of {prefix}/app/#); no account here has them.
		return !write && !within(topic, p+"app") && (within(topic, prefix) || within(topic, "$SYS"))
	}
	if write {
		return topic == p+"reg/"+user || topic == p+"status/"+user
	}
	return topic == p+"ticket/"+user || matchAny(topic, p+"root/+", p+"epoch", p+"issuer/online", p+"issuer/key/+")
}

// matchAny reports whether topic (a name, or a filter no wider than the
// rule) falls under one of the rule filters.
func matchAny(topic string, rules ...string) bool {
	for _, r := range rules {
		if narrower(topic, r) {
			return true
		}
	}
	return false
}

// narrower reports whether every topic matched by filter f is matched by
// rule r ('+' in r matches one level; '#' in f is never narrower than '+').
func narrower(f, r string) bool {
	fl, rl := strings.Split(f, "/"), strings.Split(r, "/")
	if len(fl) != len(rl) {
		return false
	}
	for i := range fl {
		switch {
		case rl[i] == "+" && fl[i] != "#":
		case fl[i] == rl[i] && fl[i] != "+" && fl[i] != "#":
		default:
			return false
		}
	}
	return true
}

// within reports whether topic is root itself or below it.
func within(topic, root string) bool {
	return topic == root || topic == root+"/#" || bytes.HasPrefix([]byte(topic), []byte(root+"/"))
}
