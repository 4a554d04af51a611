package mqttc

import (
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// copyStore is paho's MemoryStore, except that a PUBLISH packet is stored
// and handed back as a copy.
//
// On a reconnect, paho's resume takes every stored PUBLISH from the store
// and sets its DUP flag before sending it again. With MemoryStore that is
// the very packet object the publisher queued, which an outgoing goroutine
// may be writing to the network at the same moment: a data race inside
// paho (eclipse-paho/paho.mqtt.golang#703, open in v1.5.1), seen here
// under -race when Mosquitto is killed mid-epoch. Put runs before paho
// hands the packet to any other goroutine, so copying there is safe, and
// Get returns a fresh copy, so resume writes to an object only it holds.
// The payload is shared: nothing writes to it.
type copyStore struct{ *mqtt.MemoryStore }

func newCopyStore() copyStore { return copyStore{mqtt.NewMemoryStore()} }

func (s copyStore) Put(key string, m packets.ControlPacket) { s.MemoryStore.Put(key, clonePublish(m)) }

func (s copyStore) Get(key string) packets.ControlPacket { return clonePublish(s.MemoryStore.Get(key)) }

func clonePublish(m packets.ControlPacket) packets.ControlPacket {
	if p, ok := m.(*packets.PublishPacket); ok && p != nil {
		c := *p
		return &c
	}
	return m
}
