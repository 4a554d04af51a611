package wire

import "testing"

// BenchmarkTicketBodyBuild is building one ticket body's bytes, as the
// issuer does for every device every epoch.
func BenchmarkTicketBodyBuild(b *testing.B) {
	body := testBody()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := body.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseTicket is the device's strict decode of a Ticket message.
func BenchmarkParseTicket(b *testing.B) {
	body, _ := testBody().Marshal()
	path := make([][]byte, 17)
	for i := range path {
		path[i] = seq(32, byte(i))
	}
	tk, _ := (&Ticket{Version: 1, Body: body, LeafIndex: 5, TreeSize: 100000, Path: path}).Marshal()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParseTicket(tk); err != nil {
			b.Fatal(err)
		}
	}
}
