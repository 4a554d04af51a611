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
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/pkg/wire"
)

// The service accounts' names: brokerconfig's, under the names this
// package's callers know.
const (
	IssuerUser  = brokerconfig.IssuerAccount
	MonitorUser = brokerconfig.MonitorAccount
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
// topic, a topic name or a subscription filter, under the shipped
// broker-config/acl with every issuer and monitor instance rendered
// (brokerconfig.RenderACL) and its ekem/v1 topics moved under prefix: the
// rules Mosquitto enforces, read by brokerconfig.ACLRules.
func Allowed(prefix, user, topic string, write bool) bool {
	access := brokerconfig.Read
	if write {
		access = brokerconfig.Write
	}
	return rulesFor(prefix).Allows(user, topic, access)
}

var (
	rulesMu sync.Mutex
	rules   = map[string]*brokerconfig.ACLRules{}
)

// rulesFor returns the shipped ACL's rules for prefix, made once.
func rulesFor(prefix string) *brokerconfig.ACLRules {
	rulesMu.Lock()
	defer rulesMu.Unlock()
	if r, ok := rules[prefix]; ok {
		return r
	}
	text, err := brokerconfig.RenderACL(brokerconfig.ACLOptions{Issuers: brokerconfig.MaxInstances, Monitors: brokerconfig.MaxInstances})
	if err == nil {
		var r *brokerconfig.ACLRules
		if r, err = brokerconfig.ParseACL(text); err == nil {
			r = r.WithPrefix(wire.DefaultPrefix, prefix)
			rules[prefix] = r
			return r
		}
	}
	panic("embedbroker: the shipped ACL does not render: " + err.Error()) // a test catches it
}
