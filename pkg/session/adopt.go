package session

import (
	"maps"
	"os"
	"slices"
)

// Record describes every session luod holds, in any state but finished,
// with its state: what a restarted luod needs, besides the session fds
// themselves, to take its custody back within the same boot (the fds wait
// in systemd's fd store). Unlike Manifest, which is what crosses a kexec,
// it includes incoming and claimed sessions.
func (c *Custody) Record(expected uint64) *Manifest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.manifestOf(expected, c.sessionsLocked(func(e *entry) bool { return e.h != nil && e.s.State != StateFinished }, true))
}

// Adopt takes back, on a new custody, the sessions of a record whose fds a
// previous luod of this boot left in systemd's fd store. wrap turns a
// stored fd into a Handle (ioctl.NewSession). A recorded session without
// a stored fd is lost (the kernel dropped it with the last fd); a stored
// fd the record does not name is returned in unknown for the caller to
// remove from the store and close. Adopt takes ownership of every file in
// fds. It must run before the custody serves anyone, instead of Recover.
func (c *Custody) Adopt(rec *Manifest, fds map[string]*os.File, wrap func(f *os.File, name string, retrieved bool) Handle) (adopted []string, lost []LostSession, unknown []*os.File) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recovered = true
	left := maps.Clone(fds)
	if rec != nil {
		for _, ms := range rec.Sessions {
			f, ok := left[ms.Name]
			if !ok {
				lost = append(lost, LostSession{Name: ms.Name, UID: ms.UID,
					Reason: "luod restarted and the session fd was not in systemd's fd store"})
				continue
			}
			delete(left, ms.Name)
			state := ms.State
			if state == "" {
				state = StateOpen
			}
			incoming := state != StateOpen
			e := &entry{
				s: Session{Name: ms.Name, UID: ms.UID, GID: ms.GID, Labels: maps.Clone(ms.Labels),
					State: state, Files: make([]File, len(ms.Files)), Created: ms.Created, Incoming: incoming},
				h: wrap(f, ms.Name, incoming),
			}
			for i, mf := range ms.Files {
				e.s.Files[i] = File(mf)
			}
			c.insert(e)
			adopted = append(adopted, ms.Name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(left)) {
		unknown = append(unknown, left[name])
	}
	return adopted, lost, unknown
}

// EachFile calls fn with luod's own fd of each named session that holds
// one, for systemd's fd store, the custody locked meanwhile: no session
// can be closed under fn, so fn may send the fd as it is (the store keeps
// its own copy) where a duplicate would cost three system calls a
// session: make, check and close it. fn must not call c. Not for clients: no
// ownership check and no state change.
func (c *Custody) EachFile(names []string, fn func(name string, f *os.File)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, name := range names {
		if e := c.byName[name]; e != nil && e.h != nil {
			fn(name, e.h.File())
		}
	}
}

// EachFileIn is EachFile of every session in state, in name order.
func (c *Custody) EachFileIn(state State, fn func(name string, f *os.File)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.sortedLocked(func(e *entry) bool { return e.s.State == state && e.h != nil }) {
		fn(e.s.Name, e.h.File())
	}
}
