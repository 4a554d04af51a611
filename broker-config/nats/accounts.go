package natsconf

import (
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
)

// Subjects of the topics of DESIGN.md (prefix ekem/v1): NATS's MQTT
// interface maps topic level separators '/' to '.', '+' to '*' and a
// trailing '#' to '>' (plus the parent level itself).
const subjectPrefix = "ekem.v1."

// mqttDeliverySubjects is where NATS delivers a QoS 1 subscription's messages
// to the MQTT client (the deliver subject of the JetStream consumer behind
// it). Every MQTT account that subscribes needs it. Through MQTT no client
// can subscribe to a topic starting with "$MQTT" (NATS refuses it), and the
// accounts cannot use the core NATS protocol (allowed_connection_types), so
// it grants no client another client's deliveries; integration tests check
// both.
const mqttDeliverySubjects = "$MQTT.sub.>"

// Permissions is one account's publish and subscribe allow-lists (subjects).
// Everything not listed is denied.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// IssuerPermissions are ekem-issuer's rights (broker-config/acl, "user
// ekem-issuer" and the patterns it matches): it writes tickets, roots, the
// epoch, its liveness and key announcements; it reads registrations,
// statuses and the public topics. It writes no registration or status.
func IssuerPermissions() Permissions {
	return Permissions{
		Publish: []string{
			subjectPrefix + "ticket.*", subjectPrefix + "root.*", subjectPrefix + "epoch",
			subjectPrefix + "issuer.online", subjectPrefix + "issuer.key.*",
		},
		Subscribe: append([]string{subjectPrefix + "reg.*", subjectPrefix + "status.*"}, publicSubjects()...),
	}
}

// MonitorPermissions are ekem-monitor's rights: it reads everything under
// ekem/v1 and $SYS/# (which a NATS MQTT client may subscribe to but which
// carries nothing: NATS has no MQTT $SYS tree), and writes nothing.
func MonitorPermissions() Permissions {
	return Permissions{
		Subscribe: []string{"ekem.v1", subjectPrefix + ">", "$SYS", "$SYS.>"},
	}
}

// DevicePermissions are device id's rights (the ACL's pattern rules with %u
// = id): it writes its own registration and status, and reads its own
// ticket and the public topics. id must pass ValidateDeviceID.
func DevicePermissions(id string) Permissions {
	return Permissions{
		Publish:   []string{subjectPrefix + "reg." + id, subjectPrefix + "status." + id},
		Subscribe: append([]string{subjectPrefix + "ticket." + id}, publicSubjects()...),
	}
}

// publicSubjects are read by every device and by the issuer.
func publicSubjects() []string {
	return []string{subjectPrefix + "root.*", subjectPrefix + "epoch", subjectPrefix + "issuer.online", subjectPrefix + "issuer.key.*"}
}

// RenderAccounts renders accounts.conf for the issuer, the monitor and the
// devices of set: one user per account with a bcrypt hash of its password,
// MQTT connections only, and the permissions above. A device id with '.'
// fails with ErrDotInDeviceID.
func RenderAccounts(set *creds.Set) (string, error) {
	var b strings.Builder
	b.WriteString(accountsHeader)
	b.WriteString("authorization {\n  users: [\n")
	write := func(a creds.Account, p Permissions) error {
		hash, err := bcrypt.GenerateFromPassword([]byte(a.Password), BcryptCost)
		if err != nil {
			return fmt.Errorf("natsconf: hash password of %s: %w", a.Username, err)
		}
		fmt.Fprintf(&b, "    { user: %q, password: %q, allowed_connection_types: [\"MQTT\"],\n", a.Username, hash)
		fmt.Fprintf(&b, "      permissions: { publish: %s, subscribe: { allow: %s } } }\n",
			publishRule(p.Publish), subjectList(append(p.Subscribe, mqttDeliverySubjects)))
		return nil
	}
	if set.Issuer.Username != brokerconfig.IssuerAccount || set.Monitor.Username != brokerconfig.MonitorAccount {
		return "", fmt.Errorf("%w: service accounts must be %s and %s", ErrRender, brokerconfig.IssuerAccount, brokerconfig.MonitorAccount)
	}
	if err := write(set.Issuer, IssuerPermissions()); err != nil {
		return "", err
	}
	if err := write(set.Monitor, MonitorPermissions()); err != nil {
		return "", err
	}
	// Further service instances (mkcreds -issuers/-monitors): their role's
	// rights under their own names.
	for _, a := range set.Services {
		p := IssuerPermissions()
		switch brokerconfig.ServiceRole(a.Username) {
		case brokerconfig.IssuerAccount:
		case brokerconfig.MonitorAccount:
			p = MonitorPermissions()
		default:
			return "", fmt.Errorf("%w: %q is not a service instance", ErrRender, a.Username)
		}
		if err := write(a, p); err != nil {
			return "", err
		}
	}
	for _, d := range set.Devices {
		if err := ValidateDeviceID(d.Username); err != nil {
			return "", err
		}
		if err := write(d, DevicePermissions(d.Username)); err != nil {
			return "", err
		}
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

// publishRule renders a publish allow-list; an empty one denies every
// subject explicitly (NATS reads an empty allow-list as "no restriction").
func publishRule(subjects []string) string {
	if len(subjects) == 0 {
		return `{ deny: [">"] }`
	}
	return "{ allow: " + subjectList(subjects) + " }"
}

// subjectList renders subjects as a NATS config array.
func subjectList(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

const accountsHeader = `# entropykem accounts for the NATS cluster (included by every node's
# configuration). Rendered by broker-config/nats (mkcreds -nats-nodes); see
# broker-config/nats/README.md. The same rights as broker-config/acl:
#   ekem-issuer   writes ticket/+, root/+, epoch, issuer/online, issuer/key/+;
#                 reads reg/+, status/+ and the public topics
#   ekem-monitor  reads ekem/v1/# and $SYS/#; writes nothing
#   device ID     writes reg/ID, status/ID; reads ticket/ID, root/+, epoch,
#                 issuer/online, issuer/key/+
# "$MQTT.sub.>" is where NATS delivers QoS 1 messages to MQTT clients; the
# accounts may only connect over MQTT, where "$MQTT" topics are refused.
`
