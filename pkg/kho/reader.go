package kho

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// DefaultDir is where the kernel exposes the incoming handover in debugfs.
const DefaultDir = "/sys/kernel/debug/kho/in"

// Layout of a handover directory.
const (
	// RootFile is the file holding the KHO root FDT.
	RootFile = "fdt"
	// SubtreeDir is the directory holding one file per KHO subtree.
	SubtreeDir = "sub_fdts"
)

// Handover is what ReadDir found in a handover directory. Each blob is
// decoded on its own, so one bad blob does not hide the others: a nil
// result with a nil error means the blob was not handed over at all.
type Handover struct {
	// Dir is the directory read. It is not part of the JSON form.
	Dir string
	// Root is the decoded root FDT, or nil with RootErr set.
	Root    *Root
	RootErr error
	// LUO is the decoded LUO subtree, or nil with LUOErr set; both are nil
	// when no LUO state was handed over.
	LUO    *LUO
	LUOErr error
	// KexecMetadata is the decoded kexec-metadata subtree, or nil with
	// KexecMetadataErr set; both are nil when it was not handed over.
	KexecMetadata    *KexecMetadata
	KexecMetadataErr error
	// FDT is the raw root FDT.
	FDT []byte
	// Blobs holds the raw subtree blobs by name, including those this
	// package does not decode.
	Blobs map[string][]byte
}

// ReadDir reads a directory laid out like DefaultDir: RootFile and the
// subtree files in SubtreeDir. Only blobs of at most MaxBlobSize bytes are
// read whole; a larger one is kept as its first MaxBlobSize+1 bytes, which
// is enough for the decoders to report ErrOversized.
//
// If dir does not exist, ReadDir returns an error wrapping ErrNoHandover:
// the kernel creates it only when it was booted with a handover. Note that
// the same happens when debugfs is not mounted (see MountDebugFS) or the
// kernel lacks CONFIG_KEXEC_HANDOVER_DEBUGFS. Errors reading the root FDT,
// LUO or kexec metadata are reported in the Handover; other errors are
// returned.
func ReadDir(dir string) (*Handover, error) {
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	h := &Handover{Dir: dir, Blobs: map[string][]byte{}}
	h.FDT, h.RootErr = readBlob(filepath.Join(dir, RootFile))
	if h.RootErr == nil {
		h.Root, h.RootErr = DecodeRoot(h.FDT)
	}
	names, err := subtreeNames(dir)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		b, err := readBlob(filepath.Join(dir, SubtreeDir, name))
		switch {
		case name == SubtreeLUO:
			h.LUOErr = err
		case name == SubtreeKexecMetadata:
			h.KexecMetadataErr = err
		case err != nil:
			return nil, err
		}
		if err != nil {
			continue
		}
		h.Blobs[name] = b
		switch name {
		case SubtreeLUO:
			h.LUO, h.LUOErr = DecodeLUO(b)
		case SubtreeKexecMetadata:
			h.KexecMetadata, h.KexecMetadataErr = DecodeKexecMetadata(b)
		}
	}
	return h, nil
}

// Save copies the handover directory src to dst, which must not exist or
// be an empty directory, so that ReadDir(dst) decodes as ReadDir(src) did.
// It creates dst's parent directories as needed. The copy is written next
// to dst and renamed into place, so dst is either complete or absent; the
// files are readable by their owner only, as in debugfs. Like ReadDir, Save returns an error wrapping
// ErrNoHandover if src does not exist.
func Save(src, dst string) (err error) {
	if err := checkDir(src); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp")
	if err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := copyFile(filepath.Join(src, RootFile), filepath.Join(tmp, RootFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Mkdir(filepath.Join(tmp, SubtreeDir), 0o700); err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	names, err := subtreeNames(src)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := copyFile(filepath.Join(src, SubtreeDir, name), filepath.Join(tmp, SubtreeDir, name)); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	return nil
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kho: %s: %w", dir, ErrNoHandover)
	}
	if err != nil {
		return fmt.Errorf("kho: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("kho: %s: not a directory", dir)
	}
	return nil
}

// subtreeNames lists the regular files in dir's SubtreeDir, sorted, or
// none if there is no SubtreeDir.
func subtreeNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, SubtreeDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kho: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// readBlob reads at most MaxBlobSize+1 bytes of the file at path.
func readBlob(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kho: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxBlobSize+1))
	if err != nil {
		return nil, fmt.Errorf("kho: read %s: %w", path, err)
	}
	return b, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("kho: save %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("kho: save: %w", err)
	}
	return nil
}

// HandoverJSON is the JSON form of a Handover (Handover.MarshalJSON):
// errors as strings, blobs as their sizes. luod's inspect answers with
// it, and luoctl decodes that into it.
type HandoverJSON struct {
	Root               *Root          `json:"root,omitempty"`
	RootError          string         `json:"root_error,omitempty"`
	LUO                *LUO           `json:"luo,omitempty"`
	LUOError           string         `json:"luo_error,omitempty"`
	KexecMetadata      *KexecMetadata `json:"kexec_metadata,omitempty"`
	KexecMetadataError string         `json:"kexec_metadata_error,omitempty"`
	FDTSize            int            `json:"fdt_size"`
	BlobSizes          map[string]int `json:"blob_sizes"`
}

// MarshalJSON implements json.Marshaler for `luoctl inspect --json`: the
// decoded blobs, each error as a string in a "<blob>_error" field, and the
// size of every raw blob instead of its bytes. Dir is left out, so that a
// copy made by Save marshals exactly as the original.
func (h Handover) MarshalJSON() ([]byte, error) {
	j := HandoverJSON{
		Root:               h.Root,
		RootError:          errString(h.RootErr),
		LUO:                h.LUO,
		LUOError:           errString(h.LUOErr),
		KexecMetadata:      h.KexecMetadata,
		KexecMetadataError: errString(h.KexecMetadataErr),
		FDTSize:            len(h.FDT),
		BlobSizes:          map[string]int{},
	}
	for name, b := range h.Blobs {
		j.BlobSizes[name] = len(b)
	}
	return json.Marshal(j)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
