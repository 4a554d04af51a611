package embedbroker

import (
	"strings"
	"testing"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/pkg/wire"
)

// aclMatrix is every account kind × every topic of the topic table
// (PROTOCOL.md §3), for the account's own id and another's, plus
// filters and topics outside the prefix.
func aclMatrix(p string) (users, topics []string) {
	users = []string{"ekem-issuer", "ekem-issuer-2", "ekem-issuer-3", "ekem-monitor", "ekem-monitor-3", "dev-1", "dev-2", "ekem-issuer-1"}
	tp := wire.Topics{Prefix: p}
	for _, id := range append([]string{"dev-1", "dev-2"}, users...) {
		topics = append(topics, tp.Registration(id), tp.Ticket(id), tp.Status(id))
	}
	topics = append(topics, tp.Root(1), tp.Root(77), tp.Epoch(), tp.Online(), tp.IssuerKey(make([]byte, 8)),
		tp.AllRegistrations(), tp.AllTickets(), tp.AllStatuses(), tp.AllRoots(), tp.AllIssuerKeys(),
		p+"/#", p+"/root/#", p+"/+/dev-1", "#", "$SYS/#", "$SYS/broker/clients/connected", "other/topic",
		p+"/app/fleet-a/dev-1", p+"/app/fleet-a/+", p+"/app/#")
	return users, topics
}

// TestEmbeddedACLIsShippedACL: the embedded broker grants exactly what
// Mosquitto grants under the ACL mkcreds renders for three instances of
// each role (broker-config/acl and its instance sections), for every
// account × topic × read/write.
func TestEmbeddedACLIsShippedACL(t *testing.T) {
	text, err := brokerconfig.RenderACL(brokerconfig.ACLOptions{Issuers: 3, Monitors: 3})
	if err != nil {
		t.Fatal(err)
	}
	mosquitto, err := brokerconfig.ParseACL(text)
	if err != nil {
		t.Fatal(err)
	}
	users, topics := aclMatrix(wire.DefaultPrefix)
	for _, u := range users {
		for _, tp := range topics {
			for _, write := range []bool{false, true} {
				access := brokerconfig.Read
				if write {
					access = brokerconfig.Write
				}
				if got, want := Allowed(wire.DefaultPrefix, u, tp, write), mosquitto.Allows(u, tp, access); got != want {
					t.Errorf("%s %s write=%v: embedded %v, Mosquitto's ACL %v", u, tp, write, got, want)
				}
			}
		}
	}
}

// TestACLGrantsTheTopicTable: under any prefix, every account has the
// rights the topic table gives its role (PROTOCOL.md §3: who publishes
// and who receives each topic) and no write beyond them.
func TestACLGrantsTheTopicTable(t *testing.T) {
	for _, p := range []string{wire.DefaultPrefix, "site-a/ekem"} {
		tp := wire.Topics{Prefix: p}
		users, topics := aclMatrix(p)
		for _, u := range users {
			role := brokerconfig.ServiceRole(u)
			for _, topic := range topics {
				parsed, perr := tp.Parse(topic)
				if perr != nil && !strings.HasSuffix(topic, "/+") {
					parsed.Kind = wire.TopicUnknown // a filter wider than one row
				}
				own := perr == nil && parsed.DeviceID == u
				var mustWrite, mustRead bool
				switch role {
				case brokerconfig.IssuerAccount:
					switch parsed.Kind {
					case wire.TopicTicket, wire.TopicRoot, wire.TopicEpoch, wire.TopicOnline, wire.TopicIssuerKey:
						mustWrite = true
					}
					switch parsed.Kind {
					case wire.TopicRegistration, wire.TopicStatus:
						mustRead = !own
					case wire.TopicRoot, wire.TopicEpoch:
						mustRead = true
					}
				case brokerconfig.MonitorAccount:
					mustRead = parsed.Kind != wire.TopicUnknown && !own || topic == p+"/#" || topic[0] == '$'
				default:
					switch parsed.Kind {
					case wire.TopicRegistration, wire.TopicStatus:
						mustWrite = own
					case wire.TopicTicket:
						mustRead = own
					case wire.TopicRoot, wire.TopicEpoch, wire.TopicOnline, wire.TopicIssuerKey:
						mustRead = true
					}
				}
				if got := Allowed(p, u, topic, true); got != mustWrite {
					t.Errorf("prefix %s: %s write %s = %v, want %v", p, u, topic, got, mustWrite)
				}
				// Reads beyond the table are allowed only where the ACL's
				// patterns give every account a device's read rights.
				if got := Allowed(p, u, topic, false); mustRead && !got {
					t.Errorf("prefix %s: %s cannot read %s", p, u, topic)
				}
				if got := Allowed(p, u, topic, false); !mustRead && got && role == "" {
					t.Errorf("prefix %s: device %s may read %s", p, u, topic)
				}
				// Cohorts' application topics: no cohort section here, so
				// nobody, the monitor included.
				if strings.HasPrefix(topic, p+"/app/") && (Allowed(p, u, topic, false) || Allowed(p, u, topic, true)) {
					t.Errorf("prefix %s: %s has access to %s", p, u, topic)
				}
			}
		}
	}
}
