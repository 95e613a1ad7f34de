# escape=`
FROM mcr.microsoft.com/windows/servercore
RUN dir c:\ `
    && echo done
COPY . c:\app\
WORKDIR c:\app
ENV P="c:\x `"y`" z"
