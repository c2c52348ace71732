package jwkscache

import "fmt"

// State is the lifecycle state of a provider. Its JSON form is the name:
// "Empty", "Loading", "Ready" or "Refreshing".
type State uint8

// Provider states.
const (
	// StateEmpty: no keys to serve (never loaded, or the stale window ran
	// out). A lookup starts a load unless one failed moments ago.
	StateEmpty State = iota
	// StateLoading: the first fetch is running; callers wait for it.
	StateLoading
	// StateReady: keys are served; status Stale says whether past expiry.
	StateReady
	// StateRefreshing: a refresh is running; readers keep the old keys.
	StateRefreshing
)

var stateNames = [...]string{"Empty", "Loading", "Ready", "Refreshing"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// MarshalText returns the state's name.
func (s State) MarshalText() ([]byte, error) {
	if int(s) >= len(stateNames) {
		return nil, fmt.Errorf("jwkscache: invalid state %d", uint8(s))
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText parses a state name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("jwkscache: unknown state %q", b)
}
