package natstest

import (
	"context"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func connect(t *testing.T, url, user, password string, h mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID("t-" + user + "-" + time.Now().Format("150405.000000")).
		SetUsername(user).SetPassword(password).SetCleanSession(true).SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).SetDefaultPublishHandler(h)
	// After a node's death the others refuse MQTT connections for a few
	// seconds, until the streams behind MQTT sessions have new leaders.
	var c mqtt.Client
	deadline := time.Now().Add(30 * time.Second)
	for {
		c = mqtt.NewClient(o)
		tok := c.Connect()
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect %s to %s: %v", user, url, tok.Error())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// A retained ticket published on node 1 is read on node 3, and again after
// node 1 is killed; the killed node comes back and serves it too.
func TestClusterReplicatesRetained(t *testing.T) {
	c := Start(t, Options{Devices: []string{"dev-a"}})
	iss := c.Issuer()
	p := connect(t, c.NodeURL(0), iss.Username, iss.Password, nil)
	if tok := p.Publish("ekem/v1/ticket/dev-a", 1, true, []byte("t1")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	read := func(url string) {
		t.Helper()
		got := make(chan string, 4)
		a := c.Account("dev-a")
		s := connect(t, url, a.Username, a.Password, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })
		tok := s.Subscribe("ekem/v1/ticket/dev-a", 1, nil)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		if code := tok.(*mqtt.SubscribeToken).Result()["ekem/v1/ticket/dev-a"]; code != 1 {
			t.Fatalf("SUBACK 0x%02x, want granted QoS 1", code)
		}
		select {
		case m := <-got:
			if m != "t1" {
				t.Fatalf("got %q", m)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no retained ticket via %s", url)
		}
	}
	read(c.NodeURL(2))
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	read(c.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	read(c.NodeURL(0))
}
