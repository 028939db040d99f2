"""Send a message with an attachment through mailgate's SMTP submission, stdlib only.

MAILGATE_SMTP is the server as host:port (default 127.0.0.1:2525), MAILGATE_KEY
a key with the `send` scope. STARTTLS is used when the server offers it,
verified against MAILGATE_SMTP_CA when that names a CA file (else the
system's trust store).
"""

import os
import smtplib
import ssl
from email import policy
from email.message import EmailMessage

host, _, port = os.environ.get("MAILGATE_SMTP", "127.0.0.1:2525").rpartition(":")

msg = EmailMessage()
msg["From"] = "Example <noreply@example.com>"
msg["To"] = "Bob <bob@example.org>"
msg["Subject"] = "Your report"
msg["X-Mailgate-Tag"] = "reports"  # tags and metadata travel as headers
msg.set_content("Hello Bob,\nyour report is attached.")
msg.add_attachment(b"month,total\nMay,42\n", maintype="text", subtype="csv", filename="may.csv")

with smtplib.SMTP(host, int(port), timeout=30) as smtp:
    smtp.ehlo()
    if smtp.has_extn("starttls"):
        smtp.starttls(context=ssl.create_default_context(cafile=os.environ.get("MAILGATE_SMTP_CA")))
        smtp.ehlo()
    smtp.login("app", os.environ["MAILGATE_KEY"])  # any user name; the key is the password
    # send_message() would do these three steps too, but hides the final reply.
    smtp.mail("noreply@example.com")
    smtp.rcpt("bob@example.org")
    code, reply = smtp.data(msg.as_bytes(policy=policy.SMTP))
    print(code, reply.decode())  # 250 2.0.0 queued as msg_...
