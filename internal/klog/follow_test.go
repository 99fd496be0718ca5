package klog

import "testing"

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		rec  string
		want string
		ok   bool
	}{
		{"3,1234,5678,-;Can't kexec: CPUs are stuck in the kernel.\n", "Can't kexec: CPUs are stuck in the kernel.", true},
		{"11,7,1,-;kexec-bzImage64: Not a bzImage64. XLF_KERNEL_64 is not set.\n SUBSYSTEM=x\n", "kexec-bzImage64: Not a bzImage64. XLF_KERNEL_64 is not set.", true},
		{"4,9,2,c;a warning\n", "a warning", true},
		{"6,10,3,-;luo: an info line\n", "", false},
		{"7,11,4,-;a debug line\n", "", false},
		{"no separator", "", false},
		{"x,1,2,-;bad priority\n", "", false},
		{"-1,1,2,-;negative\n", "", false},
		{"3,1,2,-;\n", "", false},
	} {
		got, ok := parseRecord([]byte(tc.rec), 4)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRecord(%q) = %q, %v; want %q, %v", tc.rec, got, ok, tc.want, tc.ok)
		}
	}
}
