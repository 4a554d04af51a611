package pgtest

import "testing"

func TestStartAndNewDatabase(t *testing.T) {
	s := Start(t)
	a, b := s.NewDatabase(t), s.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases named %s", a)
	}
	if err := s.Exec(a, "CREATE TABLE x (id int); INSERT INTO x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(b, "SELECT * FROM x"); err == nil {
		t.Fatal("a table of one database is seen in another")
	}
	s.Stop()
	if s.Running() {
		t.Fatal("running after Stop")
	}
}
