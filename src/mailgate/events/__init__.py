"""What happens after `sent`: provider events in, suppressions, webhooks out, the event stream."""
