#!/usr/bin/python3
"""make run's mail catcher: a local SMTP server (aiosmtpd) that keeps every
message the shim sends (welcome mails, billing notices) as a .eml file and
prints one line per message.  Never relays anything.

    demo_mail.py DIR PORT_FILE [SHOWN_DIR]

Listens on 127.0.0.1 on a free port, written to PORT_FILE once it listens
(LATTICE_MAIL_PORT picks the port).  Messages go to DIR/001.eml, 002.eml...
(numbering continues after the files already there); SHOWN_DIR is how DIR
is written in the printed line (e.g. .run/mail).  SIGTERM/SIGINT stop it.
"""
import asyncio
import email
import email.policy
import os
import re
import signal
import sys

from aiosmtpd.smtp import SMTP


class Catcher:
    def __init__(self, directory, shown):
        self.directory = directory
        self.shown = shown
        nums = [int(m.group(1)) for f in os.listdir(directory) if (m := re.fullmatch(r'(\d+)\.eml', f))]
        self.next = max(nums, default=0) + 1

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode('utf-8', 'surrogateescape')
        name = f'{self.next:03d}.eml'
        self.next += 1
        tmp = os.path.join(self.directory, f'.{name}.tmp')
        with open(tmp, 'wb') as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.directory, name))
        try:
            subject = str(email.message_from_bytes(data, policy=email.policy.default).get('subject', '(no subject)'))
        except Exception:  # a malformed header is still kept as sent
            subject = '(unreadable subject)'
        print(f"mail: {subject} to {', '.join(envelope.rcpt_tos)} -> {self.shown}/{name}", flush=True)
        return '250 2.0.0 kept'


async def main():
    directory, port_file = sys.argv[1], sys.argv[2]
    shown = sys.argv[3] if len(sys.argv) > 3 else directory
    os.makedirs(directory, exist_ok=True)
    catcher = Catcher(directory, shown)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(catcher, hostname='lattice-demo-mail'),
                                      '127.0.0.1', int(os.environ.get('LATTICE_MAIL_PORT', '0')))
    port = server.sockets[0].getsockname()[1]
    with open(port_file + '.tmp', 'w') as f:
        f.write(f'{port}\n')
    os.rename(port_file + '.tmp', port_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == '__main__':
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main())
