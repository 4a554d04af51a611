package integration

// Helpers for the tests of the clustered broker (nats_*_test.go): the same
// system (issuer, devices, monitor, as the binaries wire them) on a 3-node
// NATS JetStream cluster configured by broker-config/nats, reached through
// natstest's loopback load balancer. Only the broker URL and credentials
// differ from the Mosquitto tests.

import (
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/natstest"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
)

// brokerURL is the URL the fleet is given: Mosquitto's password listener,
// or the NATS cluster's balancer.
func (f *sysFleet) brokerURL() string {
	if f.nats != nil {
		return f.nats.URL()
	}
	return f.b.URL()
}

// account returns the credentials of name on the fleet's broker.
func (f *sysFleet) account(name string) creds.Account {
	if f.nats != nil {
		return f.nats.Account(name)
	}
	return f.b.Account(name)
}

// newNATSFleet is newSysFleet on a fresh 3-node NATS cluster (it skips, or
// fails under EKEM_REQUIRE_NATS=1, without nats-server).
func newNATSFleet(t *testing.T, ids ...string) *sysFleet {
	t.Helper()
	c := natstest.Start(t, natstest.Options{Devices: ids})
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	coh, err := cohort.NewSoftware(secret)
	if err != nil {
		t.Fatal(err)
	}
	f := &sysFleet{
		nats: c, dir: t.TempDir(), key: key, pins: pins, cohort: coh,
		issLog: &logBuffer{}, devLog: &logBuffer{}, devices: map[string]*sysDevice{},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("issuer log:\n%s", tail(f.issLog.String(), 60))
			t.Logf("device log:\n%s", tail(f.devLog.String(), 60))
		}
	})
	return f
}

// The NATS tests run in parallel with each other (after the
// package's sequential tests): each starts its own cluster, and most of
// their time is spent waiting for JetStream leader elections after a
// node's death, not on the CPU. Run one after the other they took about
// 340 s under -race on this machine; the node-kill test alone about 250 s.

// natsNudge is the issuer's NudgeInterval on NATS: short, for a test.
const natsNudge = 2 * time.Second

// natsTimeout bounds waits that span a node's death: the surviving nodes
// refuse MQTT sessions and subscriptions for a few seconds while JetStream
// elects new stream leaders, and paho backs off up to 5 s between
// reconnection attempts.
const natsTimeout = 45 * time.Second

// natsDial connects one paho client to url, retrying refused or failed
// connections (a cluster that just lost a node refuses them for a while)
// until natsTimeout. clientID "" picks a unique one.
func natsDial(t testing.TB, url, user, password, clientID string, h mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	if clientID == "" {
		clientID = fmt.Sprintf("t%d-%s", clientSeq.Add(1), user)
	}
	deadline := time.Now().Add(natsTimeout)
	for {
		o := mqtt.NewClientOptions().AddBroker(url).SetClientID(clientID).
			SetUsername(user).SetPassword(password).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(2 * ackTimeout).
			SetProtocolVersion(4).SetDefaultPublishHandler(h)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if tok.WaitTimeout(2*ackTimeout) && tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(50) })
			return c
		}
		c.Disconnect(0)
		if time.Now().After(deadline) {
			t.Fatalf("connect %s to %s: %v", user, url, tok.Error())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// natsSubscribe connects as name and subscribes to filters one by one at
// QoS 1, returning the recorder and each filter's SUBACK code (0x01
// granted, 0x80 refused). Unlike Mosquitto, NATS checks read access at
// SUBSCRIBE.
func natsSubscribe(t testing.TB, c *natstest.Cluster, url, name string, filters ...string) (*recorder, map[string]byte) {
	t.Helper()
	r, codes, err := natsTrySubscribe(t, c, url, name, filters...)
	if err != nil {
		t.Fatal(err)
	}
	return r, codes
}

// natsTrySubscribe is natsSubscribe, returning an error if a SUBACK does
// not come within 2*ackTimeout.
func natsTrySubscribe(t testing.TB, c *natstest.Cluster, url, name string, filters ...string) (*recorder, map[string]byte, error) {
	t.Helper()
	a := c.Account(name)
	r := &recorder{name: name, notify: make(chan struct{}, 1)}
	r.client = natsDial(t, url, a.Username, a.Password, "", r.handle)
	codes := map[string]byte{}
	for _, f := range filters {
		tok := r.client.Subscribe(f, 1, nil)
		if !tok.WaitTimeout(2*ackTimeout) || tok.Error() != nil {
			r.client.Disconnect(0)
			return nil, nil, fmt.Errorf("subscribe %s to %s: no SUBACK: %v", name, f, tok.Error())
		}
		codes[f] = tok.(*mqtt.SubscribeToken).Result()[f]
	}
	return r, codes, nil
}

// natsGranted connects as name and subscribes to filters, and fails the
// test unless every filter is granted. A refusal, or a SUBACK that does
// not come, is retried on a new connection until natsTimeout: a cluster that lost a node refuses new
// subscriptions until the streams behind them have new leaders.
func natsGranted(t testing.TB, c *natstest.Cluster, name string, filters ...string) *recorder {
	t.Helper()
	deadline := time.Now().Add(natsTimeout)
	for {
		r, codes, err := natsTrySubscribe(t, c, c.URL(), name, filters...)
		if err != nil {
			// A SUBACK that waits for a consumer's new leader.
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v for %v", name, err, natsTimeout)
			}
			continue
		}
		var refused []string
		for f, code := range codes {
			if code >= 0x80 {
				refused = append(refused, f)
			}
		}
		if len(refused) == 0 {
			return r
		}
		r.client.Disconnect(0)
		if time.Now().After(deadline) {
			t.Fatalf("%s: subscriptions to %v refused for %v", name, refused, natsTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// natsConnectAs connects as account name through the balancer.
func natsConnectAs(t testing.TB, c *natstest.Cluster, name string) mqtt.Client {
	t.Helper()
	a := c.Account(name)
	return natsDial(t, c.URL(), a.Username, a.Password, "", nil)
}

// grepLog counts the lines of every node's log that contain s.
func grepLog(c *natstest.Cluster, s string) int {
	n := 0
	for i := 0; i < natstest.Nodes; i++ {
		n += strings.Count(c.Log(i), s)
	}
	return n
}
