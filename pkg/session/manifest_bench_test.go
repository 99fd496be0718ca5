package session

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

// benchManifest is a manifest of sessions×files, in the canonical form
// Encode writes (UTC times, labels set, files non-nil), so that a decoded
// copy must be deeply equal to it.
func benchManifest(sessions, files int) *Manifest {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	m := &Manifest{
		Format:                   FormatV1,
		WrittenAt:                t0,
		Release:                  "7.2.13-luo",
		BootID:                   "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
		ExpectedLiveUpdateNumber: 4,
		Sessions:                 make([]ManifestSession, sessions),
	}
	for i := range m.Sessions {
		s := ManifestSession{
			Name:    fmt.Sprintf("vm-%04d", i),
			UID:     uint32(1000 + i%7),
			GID:     uint32(1000 + i%5),
			Labels:  map[string]string{"vm": fmt.Sprint(i), "tenant": fmt.Sprintf("t%d", i%13)},
			Files:   make([]ManifestFile, files),
			Created: t0.Add(-time.Duration(i) * time.Second),
		}
		for j := range s.Files {
			s.Files[j] = ManifestFile{Token: uint64(j + 1), Label: fmt.Sprintf("guest-ram-%d", j), Size: int64(j+1) << 20}
		}
		m.Sessions[i] = s
	}
	return m
}

func BenchmarkManifestEncode(b *testing.B) {
	m := benchManifest(1000, 10)
	enc, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	back, err := DecodeManifest(enc)
	if err != nil {
		b.Fatal(err)
	}
	if !reflect.DeepEqual(back, m) {
		b.Fatal("manifest does not round-trip")
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	var n int
	for b.Loop() {
		out, err := m.Encode()
		if err != nil {
			b.Fatal(err)
		}
		n = len(out)
	}
	b.StopTimer()
	if n != len(enc) {
		b.Fatalf("encoded %d bytes, want %d", n, len(enc))
	}
	b.ReportMetric(float64(len(enc)), "bytes/manifest")
}

func BenchmarkManifestDecode(b *testing.B) {
	m := benchManifest(1000, 10)
	enc, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	var last *Manifest
	for b.Loop() {
		last, err = DecodeManifest(enc)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if !reflect.DeepEqual(last, m) {
		b.Fatal("decoded manifest differs from the encoded one")
	}
}
