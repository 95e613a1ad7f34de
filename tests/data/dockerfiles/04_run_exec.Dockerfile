FROM alpine
RUN ["echo", "hi"]
RUN [ "sh", "-c", "echo a" ]
RUN ["echo", "unicode \u00e9"]
RUN []
RUN ["not", json]
