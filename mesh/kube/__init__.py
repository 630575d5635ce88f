"""Reading the Kubernetes API the way client-go does, shared by the controller and the
node agent: the kinds we read and the client call that lists/watches each (`kinds`),
the last-seen objects of one kind (`store.ObjectCache`, sans-I/O) and the list+watch
loop that keeps it current (`reflector.Reflector`: pagination, bookmarks, resume,
410 Gone relist, backoff).

Owns nothing but reading: it must not decide what the objects mean (the controller's
translation and the node agent's enrollment do that), write to the API server, or
import any component package."""
