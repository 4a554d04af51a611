package integration

// The ACL matrix of broker-config/acl on the NATS cluster
// (broker-config/nats, accounts.conf). Differences from Mosquitto, each
// checked here and explained in broker-config/nats/README.md:
//   - NATS checks read access at SUBSCRIBE: a filter the account may not
//     read wholly is refused (SUBACK 0x80) instead of granted and filtered.
//   - A publish the permissions deny is dropped and still PUBACKed, as on
//     Mosquitto; tests check what subscribers receive.
//   - The accounts may not use the core NATS protocol at all.

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/entropykem/entropykem/internal/natstest"
)

// TestNATSACL runs the ACL matrix on one cluster with accounts for dev-a
// and dev-b (a cluster start costs seconds; the cases do not depend on
// each other's retained messages).
func TestNATSACL(t *testing.T) {
	t.Parallel() // with the other NATS tests: see nats_helpers_test.go
	c := natstest.Start(t, natstest.Options{Devices: []string{devA, devB}})
	t.Run("ConnectRefused", func(t *testing.T) { natsConnectRefused(t, c) })
	t.Run("CoreProtocolRefused", func(t *testing.T) { natsCoreProtocolRefused(t, c) })
	t.Run("DeviceReadsOnlyItsOwnTicket", func(t *testing.T) { natsDeviceReadsOnlyItsOwnTicket(t, c) })
	t.Run("WriteMatrix", func(t *testing.T) { natsWriteMatrix(t, c) })
	t.Run("ServiceAccountsRead", func(t *testing.T) { natsServiceAccountsRead(t, c) })
	t.Run("DotInTopic", func(t *testing.T) { natsDotInTopic(t, c) })
	t.Run("QoS2", func(t *testing.T) { natsQoS2(t, c) })
	t.Run("PersistentSession", func(t *testing.T) { natsPersistentSession(t, c) })
}

func natsConnectRefused(t *testing.T, c *natstest.Cluster) {
	a := c.Account(devA)
	cases := []struct{ name, user, password string }{
		{"anonymous", "", ""},
		{"wrong password", devA, a.Password + "x"},
		{"empty password", devA, ""},
		{"another account's password", devA, c.Issuer().Password},
		{"unknown user", "dev-unknown", a.Password},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := dial(c.URL(), tc.user, tc.password, nil)
			if err == nil {
				cl.Disconnect(0)
				t.Fatalf("cluster accepted %s", tc.name)
			}
		})
	}
	natsConnectAs(t, c, devA) // positive control
}

// No entropykem account may use the core NATS protocol, where
// "$MQTT.sub.>" would let it read every MQTT client's QoS 1 deliveries.
func natsCoreProtocolRefused(t *testing.T, c *natstest.Cluster) {
	for _, name := range []string{devA, issuer, monitor} {
		a := c.Account(name)
		conn, err := net.DialTimeout("tcp", c.ClientAddr(0), ackTimeout)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(2 * ackTimeout))
		r := bufio.NewReader(conn)
		if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO ") {
			t.Fatalf("no INFO from the core listener: %q %v", line, err)
		}
		conn.Write([]byte(`CONNECT {"verbose":false,"pedantic":false,"user":"` + a.Username + `","pass":"` + a.Password + `"}` + "\r\nSUB $MQTT.sub.> 1\r\nPING\r\n"))
		line, _ := r.ReadString('\n')
		conn.Close()
		if !strings.Contains(line, "Authorization Violation") {
			t.Fatalf("%s on the core NATS protocol: got %q, want an authorization violation", name, line)
		}
	}
}

// A device may subscribe to exactly its own ticket and the public topics;
// every other filter is refused, and what it receives is only its own.
func natsDeviceReadsOnlyItsOwnTicket(t *testing.T, c *natstest.Cluster) {
	iss := natsConnectAs(t, c, issuer)
	publishString(t, iss, ticketTopic(devB), "ticket-b-1", true)
	publishString(t, iss, ticketTopic(devA), "ticket-a-1", true)
	publishString(t, iss, rootTopic(1), "root-1", true)
	publishString(t, iss, topicOnline, "online", true)
	publishString(t, iss, topicIssuerKey, "key-announcement", true)
	for _, id := range []string{devA, devB} {
		d := natsConnectAs(t, c, id)
		publishString(t, d, regTopic(id), "reg-"+id, true)
		publishString(t, d, statusTopic(id), "status-"+id, true)
	}
	allowed := []string{ticketTopic(devA), prefix + "root/+", topicEpoch, topicOnline, prefix + "issuer/key/+"}
	refused := []string{ticketTopic(devB), prefix + "ticket/+", "#", prefix + "#", "$SYS/#", prefix + "reg/+",
		regTopic(devA), statusTopic(devA), prefix + "status/+", "+/v1/ticket/" + devB, "$MQTT/sub/#", "$MQTT/sub/+", "$MQTT/#"}
	a, codes := natsSubscribe(t, c, c.URL(), devA, append(append([]string{}, allowed...), refused...)...)
	for _, f := range allowed {
		if codes[f] != 1 {
			t.Errorf("dev-a: subscription to %s got 0x%02x, want granted QoS 1", f, codes[f])
		}
	}
	for _, f := range refused {
		if codes[f] < 0x80 {
			t.Errorf("dev-a: subscription to %s granted (0x%02x), want refused", f, codes[f])
		}
	}
	a.waitFor(t, ticketTopic(devA), "ticket-a-1")
	a.waitFor(t, rootTopic(1), "root-1")
	a.waitFor(t, topicOnline, "online")
	a.waitFor(t, topicIssuerKey, "key-announcement")
	publishString(t, iss, ticketTopic(devB), "ticket-b-2", true)
	publishString(t, iss, topicEpoch, "sentinel", false)
	a.waitFor(t, topicEpoch, "sentinel")
	ok := map[string]bool{ticketTopic(devA): true, rootTopic(1): true, topicEpoch: true, topicOnline: true, topicIssuerKey: true}
	a.mustNotHave(t, "a device reads only its ticket, roots, epoch, issuer/online and issuer/key/+", func(m message) bool { return !ok[m.Topic] })
	// dev-b reads its own.
	b := natsGranted(t, c, devB, ticketTopic(devB))
	b.waitFor(t, ticketTopic(devB), "ticket-b-2")
}

// Writes: a device writes only its own registration and status; the issuer
// only tickets, roots, the epoch, its liveness and key announcements; the
// monitor nothing. The monitor (reading ekem/v1/#) sees every permitted
// write and none of the others, and nothing denied is retained.
func natsWriteMatrix(t *testing.T, c *natstest.Cluster) {
	mon := natsGranted(t, c, monitor, prefix+"#", "$SYS/#")
	a := natsConnectAs(t, c, devA)
	iss := natsConnectAs(t, c, issuer)
	m := natsConnectAs(t, c, monitor)
	probes := map[string][]string{
		devA: {regTopic(devB), statusTopic(devB), ticketTopic(devA), ticketTopic(devB), rootTopic(9), topicEpoch,
			topicOnline, topicIssuerKey, prefix + "other", "ekem/v2/reg/" + devA},
		issuer:  {regTopic(devA), statusTopic(devA), regTopic(issuer), statusTopic(issuer), prefix + "other"},
		monitor: {regTopic(monitor), statusTopic(monitor), ticketTopic(devA), topicEpoch, rootTopic(9), prefix + "other"},
	}
	clients := map[string]interface {
		IsConnectionOpen() bool
	}{devA: a, issuer: iss, monitor: m}
	for who, topics := range probes {
		cl := map[string]func(string){
			devA:    func(tp string) { publishString(t, a, tp, probePayload, true) },
			issuer:  func(tp string) { publishString(t, iss, tp, probePayload, true) },
			monitor: func(tp string) { publishString(t, m, tp, probePayload, true) },
		}[who]
		for _, tp := range topics {
			cl(tp)
		}
		if !clients[who].IsConnectionOpen() {
			t.Fatalf("%s was disconnected by a denied publish", who)
		}
	}
	// Positive controls, published after the probes.
	publishString(t, a, regTopic(devA), "reg-a", true)
	publishString(t, a, statusTopic(devA), "status-a", true)
	publishString(t, iss, ticketTopic(devA), "ticket-a", true)
	publishString(t, iss, rootTopic(1), "root-1", true)
	publishString(t, iss, topicIssuerKey, "key", true)
	publishString(t, iss, topicOnline, "online", true)
	publishString(t, iss, topicEpoch, "sentinel", false)
	for tp, p := range map[string]string{regTopic(devA): "reg-a", statusTopic(devA): "status-a", ticketTopic(devA): "ticket-a",
		rootTopic(1): "root-1", topicIssuerKey: "key", topicOnline: "online", topicEpoch: "sentinel"} {
		mon.waitFor(t, tp, p)
	}
	time.Sleep(200 * time.Millisecond) // let any straggler arrive
	mon.mustNotHave(t, "a denied publish was delivered", payloadIs(probePayload))
	// Nothing denied was retained: a fresh reader of everything gets only
	// the permitted retained messages.
	fresh := natsGranted(t, c, monitor, prefix+"#")
	fresh.waitFor(t, ticketTopic(devA), "ticket-a")
	fresh.waitFor(t, regTopic(devA), "reg-a")
	time.Sleep(200 * time.Millisecond)
	fresh.mustNotHave(t, "a denied publish was retained", payloadIs(probePayload))
}

// The issuer reads every registration and status but no ticket; the
// monitor reads everything under ekem/v1 (and may subscribe to $SYS/#,
// which on NATS carries nothing).
func natsServiceAccountsRead(t *testing.T, c *natstest.Cluster) {
	_, codes := natsSubscribe(t, c, c.URL(), issuer, prefix+"reg/+", prefix+"status/+", prefix+"ticket/+", prefix+"#", "$SYS/#")
	want := map[string]bool{prefix + "reg/+": true, prefix + "status/+": true}
	for f, code := range codes {
		if want[f] != (code < 0x80) {
			t.Errorf("issuer: subscription to %s got 0x%02x (want granted: %v)", f, code, want[f])
		}
	}
	iss := natsGranted(t, c, issuer, prefix+"reg/+", prefix+"status/+")
	for _, id := range []string{devA, devB} {
		d := natsConnectAs(t, c, id)
		publishString(t, d, regTopic(id), "reg-"+id, true)
		publishString(t, d, statusTopic(id), "status-"+id, false)
	}
	for _, id := range []string{devA, devB} {
		iss.waitFor(t, regTopic(id), "reg-"+id)
		iss.waitFor(t, statusTopic(id), "status-"+id)
	}
	mon := natsGranted(t, c, monitor, prefix+"#", "$SYS/#")
	mon.waitFor(t, regTopic(devA), "reg-"+devA)
	mon.waitFor(t, regTopic(devB), "reg-"+devB)
}

// A '.' in a topic level: NATS maps MQTT topic levels to subject tokens,
// which '.' separates (since 2.10 it maps '.' in a topic to "//" in the
// subject). natsconf refuses such device ids (TestRenderAccounts... in
// broker-config/nats), since the accounts' permissions name subjects; this
// shows what the cluster does with such a topic: the publish falls outside
// the device's write permission and is not delivered as
// ekem/v1/reg/<id>. (NATS 2.9 closed the connection instead.)
func natsDotInTopic(t *testing.T, c *natstest.Cluster) {
	iss := natsGranted(t, c, issuer, prefix+"reg/+")
	a := natsConnectAs(t, c, devA)
	tok := a.Publish(prefix+"reg/"+devA+".x", 1, true, []byte(probePayload))
	acked := tok.WaitTimeout(ackTimeout) && tok.Error() == nil
	t.Logf("publish to a topic with '.': PUBACK %v, connection open %v", acked, a.IsConnectionOpen())
	b := natsConnectAs(t, c, devA)
	publishString(t, b, regTopic(devA), "sentinel", false)
	iss.waitFor(t, regTopic(devA), "sentinel")
	iss.mustNotHave(t, "a topic with '.' reached the issuer", payloadIs(probePayload))
}

// QoS 2: NATS 2.9's MQTT interface downgraded a QoS 2 subscription to QoS
// 1 and closed the connection on a QoS 2 PUBLISH; MinVersion grants QoS 2
// and delivers it. entropykem uses QoS 1 only.
func natsQoS2(t *testing.T, c *natstest.Cluster) {
	r, _ := natsSubscribe(t, c, c.URL(), devA)
	tok := r.client.Subscribe(topicEpoch, 2, nil)
	if !tok.WaitTimeout(2*ackTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if code := tok.(*mqtt.SubscribeToken).Result()[topicEpoch]; code != 2 {
		t.Fatalf("QoS 2 subscription: SUBACK 0x%02x, want 0x02", code)
	}
	iss := natsConnectAs(t, c, issuer)
	p := iss.Publish(topicEpoch, 2, false, []byte("qos2"))
	if !p.WaitTimeout(2*ackTimeout) || p.Error() != nil {
		t.Fatalf("QoS 2 PUBLISH not completed: %v", p.Error())
	}
	r.waitFor(t, topicEpoch, "qos2")
}

// Persistent sessions (clean_session=false) work on NATS as on Mosquitto:
// a QoS 1 message published while the client is away is delivered when it
// comes back with the same client id; a clean CONNECT discards the session.
// (entropykem's clients use clean sessions and retained messages.)
func natsPersistentSession(t *testing.T, c *natstest.Cluster) {
	a := c.Account(devA)
	got := make(chan string, 8)
	h := func(_ mqtt.Client, m mqtt.Message) {
		if !m.Retained() { // earlier cases left a retained ticket
			got <- string(m.Payload())
		}
	}
	dialSession := func(clean bool) mqtt.Client {
		t.Helper()
		o := mqtt.NewClientOptions().AddBroker(c.URL()).SetClientID("dev-a-persistent").
			SetUsername(a.Username).SetPassword(a.Password).SetCleanSession(clean).
			SetAutoReconnect(false).SetConnectTimeout(2 * ackTimeout).SetProtocolVersion(4).
			SetDefaultPublishHandler(h)
		cl := mqtt.NewClient(o)
		if tok := cl.Connect(); !tok.WaitTimeout(2*ackTimeout) || tok.Error() != nil {
			t.Fatalf("connect clean=%v: %v", clean, tok.Error())
		}
		return cl
	}
	s := dialSession(false)
	if tok := s.Subscribe(ticketTopic(devA), 1, nil); !tok.WaitTimeout(2*ackTimeout) || tok.(*mqtt.SubscribeToken).Result()[ticketTopic(devA)] != 1 {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	s.Disconnect(50)
	iss := natsConnectAs(t, c, issuer)
	publishString(t, iss, ticketTopic(devA), "while-away", false)
	s = dialSession(false)
	select {
	case m := <-got:
		if m != "while-away" {
			t.Fatalf("persistent session delivered %q", m)
		}
	case <-time.After(2 * waitTimeout):
		t.Fatal("the message published while away was not delivered to the persistent session")
	}
	s.Disconnect(50)
	s = dialSession(true) // discards the session
	s.Disconnect(50)
	publishString(t, iss, ticketTopic(devA), "after-clean", false)
	s = dialSession(false)
	defer s.Disconnect(50)
	select {
	case m := <-got:
		t.Fatalf("a discarded session still delivered %q", m)
	case <-time.After(time.Second):
	}
}
