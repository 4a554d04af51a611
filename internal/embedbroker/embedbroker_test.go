package embedbroker

import (
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func TestAllowed(t *testing.T) {
	const p = "ekem/v1"
	cases := []struct {
		user, topic string
		write, want bool
	}{
		{IssuerUser, p + "/reg/+", false, true},
		{IssuerUser, p + "/status/+", false, true},
		{IssuerUser, p + "/status/dev-1", false, true},
		{IssuerUser, p + "/#", false, false},
		{IssuerUser, p + "/root/+", false, true},
		{IssuerUser, p + "/epoch", false, true},
		{IssuerUser, p + "/ticket/dev-1", false, false},
		{IssuerUser, p + "/ticket/dev-1", true, true},
		{IssuerUser, p + "/root/4", true, true},
		{IssuerUser, p + "/epoch", true, true},
		{IssuerUser, p + "/issuer/online", true, true},
		{IssuerUser, p + "/issuer/key/0011223344556677", true, true},
		{"dev-1", p + "/issuer/key/+", false, true},
		{"dev-1", p + "/issuer/key/0011223344556677", true, false},
		{MonitorUser, p + "/issuer/key/+", false, true},
		{IssuerUser, p + "/reg/dev-1", true, false},
		{IssuerUser, p + "/ticket/+", false, false},
		{"dev-1", p + "/reg/dev-1", true, true},
		{"dev-1", p + "/status/dev-1", true, true},
		{"dev-1", p + "/reg/dev-2", true, false},
		{"dev-1", p + "/status/dev-2", true, false},
		{"dev-1", p + "/ticket/dev-1", true, false},
		{"dev-1", p + "/root/3", true, false},
		{"dev-1", p + "/ticket/dev-1", false, true},
		{"dev-1", p + "/ticket/dev-2", false, false},
		{"dev-1", p + "/ticket/+", false, false},
		{"dev-1", p + "/#", false, false},
		{"dev-1", "#", false, false},
		{"dev-1", p + "/root/+", false, true},
		{"dev-1", p + "/root/#", false, false},
		{"dev-1", p + "/epoch", false, true},
		{"dev-1", p + "/status/dev-1", false, false},
		{MonitorUser, p + "/#", false, true},
		{MonitorUser, "$SYS/#", false, true},
		{MonitorUser, p + "/status/dev-1", true, false},
		{MonitorUser, p + "/reg/" + MonitorUser, true, false},
		{MonitorUser, "other/#", false, false},
		// Further instances have their role's rights; look-alikes do not.
		{"ekem-issuer-2", p + "/ticket/dev-1", true, true},
		{"ekem-issuer-2", p + "/reg/+", false, true},
		{"ekem-monitor-3", p + "/#", false, true},
		{"ekem-monitor-3", p + "/status/ekem-monitor-3", true, false},
		{"ekem-issuer-1", p + "/ticket/dev-1", true, false},
	}
	for _, c := range cases {
		if got := Allowed(p, c.user, c.topic, c.write); got != c.want {
			t.Errorf("Allowed(%s, %s, write=%v) = %v, want %v", c.user, c.topic, c.write, got, c.want)
		}
	}
}

// A client's id is its username: a device account connecting with the
// issuer's client id takes over nothing, and a second connection of one
// account takes over the first (as with the shipped Mosquitto
// configuration's use_username_as_clientid).
func TestClientIDIsUsername(t *testing.T) {
	b, err := Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, u := range []string{IssuerUser, "dev-1"} {
		if err := b.AddUser(u, "pw-"+u); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.AddUser("ekem-issuer-x", "pw"); err == nil {
		t.Error("AddUser accepted a reserved name as a device")
	}
	lost := make(chan string, 4)
	connect := func(user, clientID string) mqtt.Client {
		o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(clientID).SetUsername(user).
			SetPassword("pw-" + user).SetAutoReconnect(false).
			SetConnectionLostHandler(func(mqtt.Client, error) { lost <- user + "/" + clientID })
		c := mqtt.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s as %s: %v", user, clientID, tok.Error())
		}
		return c
	}
	iss := connect(IssuerUser, IssuerUser)
	defer iss.Disconnect(0)
	attacker := connect("dev-1", IssuerUser)
	defer attacker.Disconnect(0)
	select {
	case who := <-lost:
		t.Fatalf("%s lost its connection when dev-1 connected with client id %s", who, IssuerUser)
	case <-time.After(300 * time.Millisecond):
	}
	second := connect("dev-1", "another-id")
	defer second.Disconnect(0)
	select {
	case who := <-lost:
		if who != "dev-1/"+IssuerUser {
			t.Fatalf("%s lost its connection; want dev-1's first connection taken over", who)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a second connection of dev-1 did not take over the first")
	}
	if !iss.IsConnectionOpen() {
		t.Fatal("the issuer was disconnected")
	}
}

// An account that disconnects and connects again at once (the issuer's
// start-up read of the broker, then its session) receives what it
// subscribes to: the old connection's teardown never removes the new one.
func TestReconnectAtOnceKeepsNewSession(t *testing.T) {
	b, err := Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, u := range []string{IssuerUser, "dev-1"} {
		if err := b.AddUser(u, "pw-"+u); err != nil {
			t.Fatal(err)
		}
	}
	connect := func(user string, h mqtt.MessageHandler) mqtt.Client {
		o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(user).SetUsername(user).
			SetPassword("pw-" + user).SetAutoReconnect(false).SetCleanSession(true)
		c := mqtt.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", user, tok.Error())
		}
		if h != nil {
			if tok := c.Subscribe("ekem/v1/reg/+", 1, h); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
		}
		return c
	}
	dev := connect("dev-1", nil)
	defer dev.Disconnect(0)
	// A lost session can also leave paho waiting forever: bound the rounds.
	timer := time.AfterFunc(60*time.Second, func() { panic("TestReconnectAtOnceKeepsNewSession: rounds did not finish within 60 s") })
	defer timer.Stop()
	for k := range 50 {
		first := connect(IssuerUser, func(mqtt.Client, mqtt.Message) {})
		first.Disconnect(0)
		got := make(chan struct{}, 1)
		second := connect(IssuerUser, func(mqtt.Client, mqtt.Message) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
		if tok := dev.Publish("ekem/v1/reg/dev-1", 1, false, []byte{byte(k)}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case <-got:
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: the reconnected client received nothing", k)
		}
		second.Disconnect(0)
	}
}
