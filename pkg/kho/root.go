package kho

import "github.com/u-root/u-root/pkg/dt"

// Root is the decoded KHO root FDT, the "fdt" file of the handover.
type Root struct {
	// Compatible is the root's compatible string, KHOCompatible.
	Compatible string `json:"compatible"`
	// PreservedMemoryMap is the physical address of the root of the radix
	// tree of preserved pages ("preserved-memory-map").
	PreservedMemoryMap PhysAddr `json:"preserved_memory_map"`
	// Subtrees are the blobs registered with kho_add_subtree, in FDT order.
	Subtrees []Subtree `json:"subtrees"`
}

// Subtree is one blob registered by a kernel subsystem with
// kho_add_subtree, a subnode of the KHO root FDT.
type Subtree struct {
	// Name is the subnode's name, such as SubtreeLUO; the blob appears as
	// sub_fdts/<Name>.
	Name string `json:"name"`
	// PreservedData is the physical address of the blob ("preserved-data").
	PreservedData PhysAddr `json:"preserved_data"`
	// BlobSize is the size of the blob in bytes ("blob-size").
	BlobSize uint64 `json:"blob_size"`
}

// Subtree returns the subtree called name and whether there is one.
func (r *Root) Subtree(name string) (Subtree, bool) {
	for _, s := range r.Subtrees {
		if s.Name == name {
			return s, true
		}
	}
	return Subtree{}, false
}

// DecodeRoot decodes a KHO root FDT of ABI KHOCompatible. Bytes past the
// FDT's totalsize are ignored. Every subnode must carry both u64
// properties, and subnode names must be unique, as kho_add_subtree ensures.
func DecodeRoot(b []byte) (*Root, error) {
	const blob = blobRoot
	if len(b) > MaxBlobSize {
		return nil, oversized(blob, len(b))
	}
	if !isFDT(b) {
		if len(b) < 4 {
			return nil, truncated(blob, "magic", 0, 4, len(b))
		}
		return nil, &UnknownABIError{Blob: blob, Found: describeBytes(b), Want: []string{KHOCompatible + " FDT"}}
	}
	n, err := readFDT(blob, b)
	if err != nil {
		return nil, err
	}
	r := &Root{Subtrees: []Subtree{}}
	var ok bool
	if r.Compatible, ok = matchCompatible(n, KHOCompatible); !ok {
		return nil, &UnknownABIError{Blob: blob, Found: describeCompatible(compatibles(n)), Want: []string{KHOCompatible + " FDT"}}
	}
	mm, err := u64Prop(blob, "/", n, "preserved-memory-map")
	if err != nil {
		return nil, err
	}
	r.PreservedMemoryMap = PhysAddr(mm)
	seen := make(map[string]bool, len(n.Children))
	for _, c := range n.Children {
		s, err := decodeSubtree(c)
		if err != nil {
			return nil, err
		}
		if seen[s.Name] {
			return nil, malformed(blob, "/"+s.Name, -1, "duplicate subtree")
		}
		seen[s.Name] = true
		r.Subtrees = append(r.Subtrees, s)
	}
	return r, nil
}

func decodeSubtree(n *dt.Node) (Subtree, error) {
	path := "/" + n.Name
	pa, err := u64Prop(blobRoot, path, n, "preserved-data")
	if err != nil {
		return Subtree{}, err
	}
	size, err := u64Prop(blobRoot, path, n, "blob-size")
	if err != nil {
		return Subtree{}, err
	}
	return Subtree{Name: n.Name, PreservedData: PhysAddr(pa), BlobSize: size}, nil
}
