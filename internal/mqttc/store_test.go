package mqttc

import (
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestCopyStore: what paho's resume gets from the store and marks DUP is
// never the packet the publisher queued, nor the stored one.
func TestCopyStore(t *testing.T) {
	s := newCopyStore()
	s.Open()
	defer s.Close()
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID, pub.TopicName, pub.Payload = 1, 7, "ekem/v1/ticket/dev-1", []byte("ticket")
	s.Put("o.7", pub)

	got, ok := s.Get("o.7").(*packets.PublishPacket)
	if !ok || got == pub {
		t.Fatalf("Get returned %p, the queued packet is %p: resume would write to the queued packet", got, pub)
	}
	got.Dup = true // what resume does
	if pub.Dup {
		t.Fatal("marking the stored copy DUP changed the queued packet")
	}
	again := s.Get("o.7").(*packets.PublishPacket)
	if again.Dup || again == got {
		t.Fatal("marking one copy DUP changed the stored packet")
	}
	if again.TopicName != pub.TopicName || string(again.Payload) != "ticket" || again.MessageID != 7 || again.Qos != 1 {
		t.Fatalf("stored packet %v differs from the queued one", again)
	}
	// Other packets are stored as they are, and absent keys stay nil.
	sub := packets.NewControlPacket(packets.Subscribe)
	s.Put("o.8", sub)
	if s.Get("o.8") != sub || s.Get("o.9") != nil {
		t.Fatal("non-PUBLISH packets or absent keys not passed through")
	}
}
