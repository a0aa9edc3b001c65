"""The web console (the ``mailrouter[console]`` extra): the journal live, a message's page,
the queues, the senders' states, the routes and their tester, compose, and the activity chart.

It reads and acts only through the server's command table (``runtime.commands``): called
directly inside ``mailrouter start`` (``console_port``), or over the control socket by
``mailrouter console``. ``app.create_app`` builds the Starlette application; ``service`` serves
it with uvicorn; ``auth`` holds the login, session, CSRF and header rules.
"""
