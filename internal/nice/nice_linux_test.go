package nice

import "testing"

// TestSet: Set reaches every thread, and Get and Threads read it back.
func TestSet(t *testing.T) {
	base, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	want := base + 1 // raising nice needs no privilege
	if want > 19 {
		t.Skipf("nice is %d already", base)
	}
	defer Set(base) // lowering back takes CAP_SYS_NICE; harmless if refused
	if err := Set(want); err != nil {
		t.Fatal(err)
	}
	if got, err := Get(); err != nil || got != want {
		t.Fatalf("Get after Set(%d) = %d, %v", want, got, err)
	}
	threads, err := Threads()
	if err != nil || len(threads) == 0 {
		t.Fatalf("Threads = %v, %v", threads, err)
	}
	for tid, got := range threads {
		if got != want {
			t.Errorf("thread %d has nice %d, want %d", tid, got, want)
		}
	}
}
